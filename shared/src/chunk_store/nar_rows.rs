//! The chunk rows of NARs served lately, so a NAR downloaded again (a CI
//! fleet pulling one closure, a popular toolchain) is read from storage
//! without a database round trip per hundred chunks: those round trips were
//! about a fifth of the CPU of serving one large NAR to 16 clients at once
//! (docs/measurements.md "Chunk rows kept for downloads").
//!
//! Keyed by the layout's identity ([`NarLayout::frames_digest`], which
//! covers every chunk's hash, stored size and location when the layout was
//! computed), so an entry is only found for the layout it was read under:
//! whatever moves or rewrites a chunk's frame makes the stored layouts
//! stale ([`crate::db::layout_epoch`]) and the next download computes a new
//! identity. An entry holds rows that were current when read, and is
//! dropped after `ttl`, kept well under the GC grace period: a frame moved
//! (compaction) or replaced (recompression) after the rows were read stays
//! readable at its old location for the grace period (docs/gc.md "Packs"),
//! as it does for a download that read the rows a moment before the move.
//!
//! [`NarLayout::frames_digest`]: crate::db::nar_layout::NarLayout

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hashlink::LruCache;

use crate::db::chunks::ChunkRecord;

/// Rows kept at most, all NARs together (about 90 bytes each: some 12 MB,
/// the rows of about 8 GiB of NAR at the default chunk size).
const MAX_ROWS: usize = 1 << 17;

/// Rows of one NAR in NAR order.
pub(super) type Rows = Arc<[ChunkRecord]>;

/// Chunk rows by layout identity, least recently used dropped first.
pub struct NarRows {
    ttl: Duration,
    inner: Mutex<Inner>,
}

struct Inner {
    entries: LruCache<[u8; 32], (Instant, Rows)>,
    rows: usize,
}

impl NarRows {
    /// A cache whose entries live `ttl` (zero keeps nothing).
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(Inner {
                entries: LruCache::new_unbounded(),
                rows: 0,
            }),
        }
    }

    /// How long an entry may be used for a GC grace period of `grace`: a
    /// quarter of it, at most five minutes.
    pub fn ttl_for_grace(grace: Duration) -> Duration {
        (grace / 4).min(Duration::from_secs(300))
    }

    /// The rows read under the layout `digest`, unless expired.
    pub(super) fn get(&self, digest: &[u8; 32]) -> Option<Rows> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (filled, rows) = inner.entries.get(digest)?.clone();
        if filled.elapsed() < self.ttl {
            return Some(rows);
        }
        inner.entries.remove(digest);
        inner.rows -= rows.len();
        None
    }

    /// Whether a NAR of `n` chunks would be kept (one of more than a
    /// quarter of the capacity would push out everything else).
    pub(super) fn would_keep(&self, n: usize) -> bool {
        !self.ttl.is_zero() && n > 0 && n <= MAX_ROWS / 4
    }

    /// Keeps `rows`, current as just read, for the layout `digest`.
    pub(super) fn insert(&self, digest: [u8; 32], rows: Vec<ChunkRecord>) {
        if !self.would_keep(rows.len()) {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.rows += rows.len();
        if let Some((_, old)) = inner.entries.insert(digest, (Instant::now(), rows.into())) {
            inner.rows -= old.len();
        }
        while inner.rows > MAX_ROWS {
            match inner.entries.remove_lru() {
                Some((_, (_, gone))) => inner.rows -= gone.len(),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkHash;
    use crate::db::ChunkId;

    fn rows(n: usize) -> Vec<ChunkRecord> {
        (0..n)
            .map(|i| ChunkRecord {
                id: ChunkId(i as i64 + 1),
                hash: ChunkHash::of(&i.to_le_bytes()),
                chunk_size: 65536,
                file_size: 20000,
                pack_id: Some(1),
                pack_offset: Some(i as i64 * 20000),
                refcount: 1,
            })
            .collect()
    }

    #[test]
    fn kept_until_expired_or_pushed_out() {
        let cache = NarRows::new(Duration::from_secs(60));
        cache.insert([1; 32], rows(3));
        assert_eq!(cache.get(&[1; 32]).map(|r| r.len()), Some(3));
        assert!(cache.get(&[2; 32]).is_none());
        // Filling it pushes out the least recently used, as few as needed.
        for k in 2..=5u8 {
            cache.insert([k; 32], rows(MAX_ROWS / 4));
        }
        assert!(cache.get(&[1; 32]).is_none(), "the least recent went");
        assert!(cache.get(&[2; 32]).is_some(), "and only it: used now");
        cache.insert([6; 32], rows(1));
        assert!(cache.get(&[3; 32]).is_none(), "now the least recent");
        assert!(
            [2u8, 4, 5, 6]
                .iter()
                .all(|k| cache.get(&[*k; 32]).is_some())
        );
        let inner = cache.inner.lock().unwrap();
        assert!(inner.rows <= MAX_ROWS);

        let expired = NarRows::new(Duration::ZERO);
        expired.insert([1; 32], rows(3));
        assert!(expired.get(&[1; 32]).is_none(), "a zero ttl keeps nothing");
        assert!(!cache.would_keep(MAX_ROWS / 4 + 1), "too large to keep");
    }

    #[test]
    fn ttl_stays_well_under_the_grace_period() {
        assert_eq!(
            NarRows::ttl_for_grace(Duration::from_secs(3600)),
            Duration::from_secs(300)
        );
        assert_eq!(
            NarRows::ttl_for_grace(Duration::from_secs(60)),
            Duration::from_secs(15)
        );
    }
}
