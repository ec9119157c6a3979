//! Local rate limits (governor), checked before anything is forwarded: the upstream-wide rate and
//! the playground limits. Each tenant's own request rate is checked with its identity (`auth`).
use std::{num::NonZeroU32, time::Duration};

use governor::{
    DefaultDirectRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use crate::{config::RateLimitConfig, http::error::ApiError};

const DAY: Duration = Duration::from_hours(24);

#[derive(Debug)]
pub(crate) struct Limiters {
    upstream: Option<DefaultDirectRateLimiter>,
    playground_minute: Option<DefaultDirectRateLimiter>,
    playground_day: Option<DefaultDirectRateLimiter>,
    clock: DefaultClock,
}

/// `n` events per `period`, as a burst of `n` that refills evenly over the period.
fn per_period(n: u32, period: Duration) -> Option<DefaultDirectRateLimiter> {
    let n = NonZeroU32::new(n)?;
    let quota = Quota::with_period(period / n.get())?.allow_burst(n);
    Some(RateLimiter::direct(quota))
}

// === impl Limiters ===

impl Limiters {
    pub(crate) fn new(config: &RateLimitConfig) -> Self {
        let upstream = NonZeroU32::new(config.upstream_per_second).map(|rate| {
            let burst = NonZeroU32::new(config.upstream_burst).unwrap_or(rate);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            upstream,
            playground_minute: per_period(config.playground_per_minute, Duration::from_mins(1)),
            playground_day: per_period(config.playground_per_day, DAY),
            clock: DefaultClock::default(),
        }
    }

    fn check(
        &self,
        limiter: Option<&DefaultDirectRateLimiter>,
        limit: &'static str,
    ) -> Result<(), ApiError> {
        let Some(limiter) = limiter else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| {
            metrics::counter!(crate::telemetry::RATE_LIMITED, "limit" => limit).increment(1);
            ApiError::RateLimited {
                limit,
                retry_after: not_until.wait_time_from(self.clock.now()),
            }
        })
    }

    /// One request toward the upstream.
    pub(crate) fn check_upstream(&self) -> Result<(), ApiError> {
        self.check(self.upstream.as_ref(), "upstream_per_second")
    }

    /// One playground run. The minute window is checked first so that a burst refused by it
    /// does not use up the day's allowance.
    pub(crate) fn check_playground(&self) -> Result<(), ApiError> {
        self.check(self.playground_minute.as_ref(), "playground_per_minute")?;
        self.check(self.playground_day.as_ref(), "playground_per_day")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playground_allows_the_burst_then_answers_with_a_wait() {
        let limiters = Limiters::new(&RateLimitConfig {
            upstream_per_second: 0,
            upstream_burst: 0,
            playground_per_minute: 2,
            playground_per_day: 10,
        });
        assert!(limiters.check_playground().is_ok());
        assert!(limiters.check_playground().is_ok());
        let Err(ApiError::RateLimited { limit, retry_after }) = limiters.check_playground() else {
            panic!("third run within a minute must be limited");
        };
        assert_eq!(limit, "playground_per_minute");
        assert!(retry_after > Duration::from_secs(20) && retry_after <= Duration::from_secs(30));
        assert!(
            limiters.check_upstream().is_ok(),
            "upstream limit is off by default"
        );
    }

    #[test]
    fn day_limit_applies_once_minute_allowance_is_plenty() {
        let limiters = Limiters::new(&RateLimitConfig {
            upstream_per_second: 0,
            upstream_burst: 0,
            playground_per_minute: 100,
            playground_per_day: 3,
        });
        for _ in 0..3 {
            assert!(limiters.check_playground().is_ok());
        }
        let Err(ApiError::RateLimited { limit, retry_after }) = limiters.check_playground() else {
            panic!("fourth run of the day must be limited");
        };
        assert_eq!(limit, "playground_per_day");
        assert!(retry_after > Duration::from_hours(1));
    }
}
