//! Chunks moved into new packs by this process: compaction (dead space
//! reclaimed) and recompression (cold packs rewritten at the archive level)
//! progressing, as counters; the backlogs they shrink are the database's
//! gauges (`db::packs::totals`).

use std::sync::atomic::{AtomicU64, Ordering};

/// What one committed pack of moves did (or the process totals).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MoveCounts {
    /// Chunk rows moved into new packs.
    pub chunks_moved: u64,
    /// Stored bytes of those chunks, as they were before the move.
    pub bytes_moved: u64,
    /// Chunks whose frame was recompressed smaller on the way.
    pub chunks_recompressed: u64,
    /// Stored bytes those frames shed.
    pub bytes_saved: u64,
}

static CHUNKS_MOVED: AtomicU64 = AtomicU64::new(0);
static BYTES_MOVED: AtomicU64 = AtomicU64::new(0);
static CHUNKS_RECOMPRESSED: AtomicU64 = AtomicU64::new(0);
static BYTES_SAVED: AtomicU64 = AtomicU64::new(0);

/// Adds moves that were committed.
pub fn record(m: MoveCounts) {
    CHUNKS_MOVED.fetch_add(m.chunks_moved, Ordering::Relaxed);
    BYTES_MOVED.fetch_add(m.bytes_moved, Ordering::Relaxed);
    CHUNKS_RECOMPRESSED.fetch_add(m.chunks_recompressed, Ordering::Relaxed);
    BYTES_SAVED.fetch_add(m.bytes_saved, Ordering::Relaxed);
}

/// What this process moved since it started.
pub fn totals() -> MoveCounts {
    MoveCounts {
        chunks_moved: CHUNKS_MOVED.load(Ordering::Relaxed),
        bytes_moved: BYTES_MOVED.load(Ordering::Relaxed),
        chunks_recompressed: CHUNKS_RECOMPRESSED.load(Ordering::Relaxed),
        bytes_saved: BYTES_SAVED.load(Ordering::Relaxed),
    }
}
