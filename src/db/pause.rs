//! How long a retry pauses: an exponential backoff, and jitter that spreads concurrent runners
//! apart. Used by the step retries ([`super::retry`]), the migration lock's wait
//! ([`super::lock`]) and the connection wait ([`super`]); imports nothing of them.

use std::time::Duration;

/// 250ms, 500ms, 1s, ... capped at 15s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(15))
}

/// A random duration in [d/2, d]: spreads retries of concurrent runners apart.
pub(crate) fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + Duration::from_secs_f64(half.as_secs_f64() * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(1000));
        assert_eq!(backoff(30), Duration::from_secs(15));
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(1000));
            assert!(j >= Duration::from_millis(500) && j <= Duration::from_millis(1000));
        }
    }
}
