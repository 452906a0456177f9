//! When a failed entry is tried again.
//!
//! Exponential, so a server that is down for a day is not hammered by every
//! host's drainer, yet capped, so a path waits at most ten minutes once the
//! server is back.

use std::time::Duration;

/// Delay after the first failure.
pub const FIRST: Duration = Duration::from_secs(5);
/// Longest delay between two attempts.
pub const MAX: Duration = Duration::from_secs(600);

/// The wait after the `attempts`-th failed attempt (1-based): 5 s, 10 s,
/// 20 s, … up to [`MAX`].
pub fn delay(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    FIRST.saturating_mul(1 << doublings).min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        assert_eq!(delay(0), FIRST);
        assert_eq!(delay(1), Duration::from_secs(5));
        assert_eq!(delay(2), Duration::from_secs(10));
        assert_eq!(delay(3), Duration::from_secs(20));
        assert_eq!(delay(8), Duration::from_secs(600));
        assert_eq!(delay(u32::MAX), MAX);
    }
}
