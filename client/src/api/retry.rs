//! Retrying transient failures with exponential backoff.
//!
//! A push of thousands of paths over a flaky link should not fail for one
//! reset connection or one 503 from a restarting replica; a 4xx, though,
//! would fail the same way again and is returned at once.

use std::future::Future;
use std::time::Duration;

use super::ApiError;

/// An error that knows whether another attempt may succeed.
pub trait Transient {
    /// Whether trying again may help.
    fn is_transient(&self) -> bool;
    /// A delay the server asked for (`Retry-After`), if any.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

impl Transient for ApiError {
    fn is_transient(&self) -> bool {
        ApiError::is_transient(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        ApiError::retry_after(self)
    }
}

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// Delay before the first retry; doubled for each further one.
    pub base_delay: Duration,
    /// Upper bound of any delay, `Retry-After` included.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Four attempts, waiting 1 s, 2 s, 4 s: rides out a server restart
    /// without making a real outage look like a hang.
    fn default() -> Self {
        Self {
            attempts: 4,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based), honouring a
    /// server's `Retry-After` when it is longer.
    pub fn delay(&self, retry: u32, requested: Option<Duration>) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)));
        exp.max(requested.unwrap_or_default()).min(self.max_delay)
    }

    /// Runs `op` (given the 1-based attempt number) until it succeeds, fails
    /// permanently, or the attempts are used up. `on_retry` hears about each
    /// transient failure that will be retried, and the wait before it.
    pub async fn run<T, E, F, Fut>(
        &self,
        mut on_retry: impl FnMut(&E, Duration),
        mut op: F,
    ) -> Result<T, E>
    where
        E: Transient,
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let attempts = self.attempts.max(1);
        let mut attempt = 1;
        loop {
            match op(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < attempts && e.is_transient() => {
                    let wait = self.delay(attempt, e.retry_after());
                    on_retry(&e, wait);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// How a push waits while the server's staging is full (503
/// `StagingFull`, docs/protocol.md "Staging quota"). Not a failure: the
/// backlog drains at the pace of the server's workers, so this waits far
/// longer than [`RetryPolicy`], and with jitter, so that the many uploads
/// a crowd of clients holds back do not all return in the same second.
#[derive(Debug, Clone, Copy)]
pub struct StagingWait {
    /// Longest time one upload waits in all before it fails.
    pub limit: Duration,
    /// Wait when the server sends no `Retry-After`.
    pub default_wait: Duration,
    /// Upper bound of one wait, before jitter.
    pub max_wait: Duration,
}

impl Default for StagingWait {
    /// An hour per path, waking every `Retry-After` (5 s from Larder) to
    /// 60 s: a CI push outlasts a burst from other pushers, yet a server
    /// whose workers are down fails it in bounded time.
    fn default() -> Self {
        Self {
            limit: Duration::from_secs(3600),
            default_wait: Duration::from_secs(10),
            max_wait: Duration::from_secs(60),
        }
    }
}

impl StagingWait {
    /// The wait before the next try: the server's `Retry-After` (or the
    /// default), capped, stretched by `jitter` (in `[0, 1)`) up to half
    /// again.
    pub fn delay(&self, requested: Option<Duration>, jitter: f64) -> Duration {
        let base = requested
            .unwrap_or(self.default_wait)
            .min(self.max_wait)
            .max(Duration::from_millis(100));
        base.mul_f64(1.0 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// A number in `[0, 1)` that differs between calls and processes: enough
/// to spread retries, with no random-number crate (std's hasher keys are
/// seeded randomly per process and advance with every `RandomState`).
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[derive(Debug, PartialEq)]
    struct Fail(bool);

    impl Transient for Fail {
        fn is_transient(&self) -> bool {
            self.0
        }
    }

    fn quick(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn retries_transient_until_success() {
        let calls = Cell::new(0);
        let retries = Cell::new(0);
        let out = quick(4)
            .run(
                |_: &Fail, _| retries.set(retries.get() + 1),
                |attempt| {
                    calls.set(calls.get() + 1);
                    async move {
                        if attempt < 3 {
                            Err(Fail(true))
                        } else {
                            Ok(attempt)
                        }
                    }
                },
            )
            .await;
        assert_eq!(out, Ok(3));
        assert_eq!(calls.get(), 3);
        assert_eq!(retries.get(), 2);
    }

    #[tokio::test]
    async fn gives_up_after_the_last_attempt() {
        let calls = Cell::new(0);
        let out: Result<(), Fail> = quick(3)
            .run(
                |_, _| {},
                |_| {
                    calls.set(calls.get() + 1);
                    async { Err(Fail(true)) }
                },
            )
            .await;
        assert_eq!(out, Err(Fail(true)));
        assert_eq!(calls.get(), 3);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let calls = Cell::new(0);
        let out: Result<(), Fail> = quick(5)
            .run(
                |_, _| {},
                |_| {
                    calls.set(calls.get() + 1);
                    async { Err(Fail(false)) }
                },
            )
            .await;
        assert_eq!(out, Err(Fail(false)));
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn staging_waits_follow_retry_after_with_jitter() {
        let w = StagingWait::default();
        let five = Some(Duration::from_secs(5));
        assert_eq!(w.delay(five, 0.0), Duration::from_secs(5));
        assert_eq!(w.delay(five, 0.999_999).as_secs(), 7);
        assert_eq!(w.delay(None, 0.0), Duration::from_secs(10));
        assert_eq!(
            w.delay(Some(Duration::from_secs(3600)), 0.0),
            Duration::from_secs(60)
        );
        let spread: std::collections::HashSet<u64> = (0..20).map(|_| jitter().to_bits()).collect();
        assert!(spread.len() > 1, "jitter does not vary");
        assert!((0..100).map(|_| jitter()).all(|j| (0.0..1.0).contains(&j)));
    }

    #[test]
    fn delays_double_and_are_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, None), Duration::from_secs(1));
        assert_eq!(p.delay(2, None), Duration::from_secs(2));
        assert_eq!(p.delay(3, None), Duration::from_secs(4));
        assert_eq!(p.delay(10, None), Duration::from_secs(30));
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(30)
        );
    }
}
