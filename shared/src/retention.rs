//! Retention: how long an unused path of a cache stays, and when a use of a
//! path must be written at once rather than through the batched access log
//! (docs/gc.md "Closures"). One place, so the API (which records uses) and
//! GC (which decides idleness) agree.

use crate::config::GcConfig;
use crate::db::caches::CacheRecord;

/// Uses of a path last used this long ago (or longer) are written again;
/// more recent ones are not, which bounds the writes a busy dependency
/// costs. Capped at half the retention (see [`Retention::refresh_before`]).
pub const REFRESH_AFTER_SECS: i64 = 60;

/// A cache's retention period in seconds; 0 keeps its paths forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(i64);

impl Retention {
    /// The cache's own period, else the configured default.
    pub fn of(cache: &CacheRecord, gc: &GcConfig) -> Self {
        Self(
            cache
                .retention_period
                .unwrap_or(gc.default_retention_period.as_secs() as i64)
                .max(0),
        )
    }

    /// From seconds (0 = forever).
    pub fn from_secs(secs: i64) -> Self {
        Self(secs.max(0))
    }

    /// The period in seconds (0 = forever).
    pub fn secs(self) -> i64 {
        self.0
    }

    /// Paths last used before this are idle at `now`; `None`: nothing expires.
    pub fn cutoff(self, now: i64) -> Option<i64> {
        (self.0 > 0).then(|| now - self.0)
    }

    /// A use at `now` of a path an upload references or `get-missing-paths`
    /// finds is written (synchronously) when the path was last used before
    /// the returned time: at most [`REFRESH_AFTER_SECS`], and at most half
    /// the retention ago, so a path not rewritten is still at least half a
    /// retention period from idle. `None`: nothing expires, no write needed.
    pub fn refresh_before(self, now: i64) -> Option<i64> {
        (self.0 > 0).then(|| now - (self.0 / 2).min(REFRESH_AFTER_SECS))
    }

    /// Whether a narinfo read at `now` of a path last used at
    /// `last_accessed_at` is written at once: in the second half of its
    /// retention it is (a client that saw it may push a path referring to
    /// it next), otherwise the batched access log suffices.
    pub fn read_needs_sync_touch(self, last_accessed_at: i64, now: i64) -> bool {
        self.0 > 0 && last_accessed_at < now - self.0 / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_is_bounded_by_half_the_retention() {
        let now = 1_000_000;
        assert_eq!(Retention::from_secs(0).refresh_before(now), None);
        assert_eq!(Retention::from_secs(0).cutoff(now), None);
        assert_eq!(
            Retention::from_secs(30 * 86_400).refresh_before(now),
            Some(now - 60)
        );
        assert_eq!(Retention::from_secs(10).refresh_before(now), Some(now - 5));
        assert_eq!(Retention::from_secs(1).refresh_before(now), Some(now));
        assert_eq!(Retention::from_secs(60).cutoff(now), Some(now - 60));
    }

    #[test]
    fn reads_write_at_once_in_the_second_half() {
        let r = Retention::from_secs(100);
        assert!(!r.read_needs_sync_touch(950, 1000));
        assert!(r.read_needs_sync_touch(949, 1000));
        assert!(!Retention::from_secs(0).read_needs_sync_touch(0, 1000));
    }
}
