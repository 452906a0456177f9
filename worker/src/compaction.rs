//! Compaction (docs/gc.md "Compaction"): GC's last phase, under its lease,
//! so it runs once cluster-wide. It rewrites packs that are mostly dead
//! space (less than `[storage] compaction-threshold` live) and merges packs
//! smaller than a quarter of `pack-size`, copying their live frames, in
//! pack order, into new packs through [`crate::pack_mover`], whose module
//! doc states how each move stays safe against GC, readers and crashes.
//!
//! Packs written longer than `[compression] archive-after` ago below
//! `archive-level` are cold: their frames are recompressed on the way
//! ([`crate::recompress`]), also when they would not need compacting, for
//! at most [`RECOMPRESS_BUDGET`] per pass (docs/gc.md "Recompression").

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;

use larder_shared::chunk_store::pack_writer;
use larder_shared::db::chunks::{self, ChunkRecord};
use larder_shared::db::packs::{self, PackUse};

use crate::gc_lease::GcLease;
use crate::jobs::ingest::BeforeCommit;
use crate::pack_mover::{Moved, Mover};
use crate::recompress;
use crate::services::Services;

/// Packs weighed per GC.
const CANDIDATES: i64 = 1000;
/// Most bytes of old packs read into memory at once.
const WINDOW: u64 = 16 * 1024 * 1024;
/// Time a GC pass spends starting on packs only recompression wants (level
/// 19 runs at about 4 MB/s per core): a backlog is worked off over passes.
pub const RECOMPRESS_BUDGET: Duration = Duration::from_secs(15 * 60);

/// Rewrites the packs worth it at `now` (packs younger than the grace
/// period are left alone: their writers may still be committing).
pub async fn compact(svc: &Services, lease: &GcLease, now: i64) -> anyhow::Result<Moved> {
    let scope = Scope::gc(svc, now);
    compact_inner(svc, lease, now, scope, None).await
}

/// [`compact`], stopping before each move's commit until `pause` is
/// resumed (what a compaction killed there looks like, for tests).
pub async fn compact_pausing(
    svc: &Services,
    lease: &GcLease,
    now: i64,
    pause: &BeforeCommit,
) -> anyhow::Result<Moved> {
    let scope = Scope::gc(svc, now);
    compact_inner(svc, lease, now, scope, Some(pause)).await
}

/// Recompresses every pack below the archive level now, however young and
/// without a time budget (`larder-admin repack --archive`), besides what
/// [`compact`] would do.
pub async fn archive_all(svc: &Services, lease: &GcLease, now: i64) -> anyhow::Result<Moved> {
    let grace = svc.config.garbage_collection.grace_period.as_secs() as i64;
    let scope = Scope {
        cold_before: now - grace,
        budget: None,
    };
    compact_inner(svc, lease, now, scope, None).await
}

/// Which packs count as cold, and how long recompression may start new
/// packs.
struct Scope {
    cold_before: i64,
    budget: Option<Duration>,
}

impl Scope {
    fn gc(svc: &Services, now: i64) -> Self {
        let c = &svc.config;
        let grace = c.garbage_collection.grace_period.as_secs() as i64;
        let after = c.compression.archive_after.as_secs() as i64;
        Self {
            cold_before: now - after.max(grace),
            budget: Some(RECOMPRESS_BUDGET),
        }
    }
}

async fn compact_inner(
    svc: &Services,
    lease: &GcLease,
    now: i64,
    scope: Scope,
    pause: Option<&BeforeCommit>,
) -> anyhow::Result<Moved> {
    let storage = &svc.config.storage;
    if storage.pack_size == 0 {
        return Ok(Moved::default());
    }
    let ingest_level = svc.config.compression.level;
    let archive = svc.config.compression.archive();
    let mut work = sparse_or_small(svc, now).await?;
    let compacting: HashSet<i64> = work.iter().map(|p| p.id).collect();
    if let Some(level) = archive {
        let mut conn = svc.db.conn().await?;
        let cold =
            packs::recompression_candidates(conn.raw(), level, scope.cold_before, CANDIDATES)
                .await?;
        work.extend(cold.into_iter().filter(|p| !compacting.contains(&p.id)));
    }
    if work.is_empty() {
        return Ok(Moved::default());
    }
    let started = Instant::now();
    let mut mover = Mover::new(svc, lease, "compact", now, pause);
    for pack in &work {
        let level = pack.level.unwrap_or(ingest_level);
        let within_budget = scope.budget.is_none_or(|b| started.elapsed() < b);
        let recompress_at =
            archive.filter(|&a| level < a && pack.created_at < scope.cold_before && within_budget);
        if recompress_at.is_none() && !compacting.contains(&pack.id) {
            continue; // only recompression wanted it, and the budget is spent
        }
        let rows = {
            let mut conn = svc.db.conn().await?;
            chunks::in_pack(conn.raw(), pack.id).await?
        };
        for window in windows(&rows) {
            let mut frames = read_live_frames(svc, pack.id, window).await?;
            if let Some(a) = recompress_at {
                frames = recompress::frames(window, frames, a).await?;
            }
            for (rec, frame) in window.iter().zip(frames) {
                mover
                    .push(rec, frame, recompress_at.unwrap_or(level))
                    .await?;
            }
        }
    }
    let done = mover.finish().await?;
    tracing::info!(?done, "compaction finished");
    Ok(done)
}

/// The packs compaction proper wants: sparse ones, and small ones worth
/// merging (nothing if rewriting them gains nothing).
async fn sparse_or_small(svc: &Services, now: i64) -> anyhow::Result<Vec<PackUse>> {
    let storage = &svc.config.storage;
    let threshold = storage.compaction_threshold;
    if threshold <= 0.0 {
        return Ok(Vec::new());
    }
    let grace = svc.config.garbage_collection.grace_period.as_secs() as i64;
    let small = (storage.pack_size / 4) as i64;
    let candidates = {
        let mut conn = svc.db.conn().await?;
        packs::compaction_candidates(conn.raw(), threshold, small, now - grace, CANDIDATES).await?
    };
    Ok(if worth_it(&candidates, threshold, small) {
        candidates
    } else {
        Vec::new()
    })
}

/// Whether rewriting `candidates` gains anything: a sparse pack, or small
/// packs that together fill at least a quarter pack (merging fewer would
/// only make another small pack).
fn worth_it(candidates: &[PackUse], threshold: f64, small: i64) -> bool {
    let sparse = candidates
        .iter()
        .any(|p| (p.live_bytes as f64) < p.size as f64 * threshold);
    let smalls: Vec<&PackUse> = candidates.iter().filter(|p| p.size < small).collect();
    let small_live: i64 = smalls.iter().map(|p| p.live_bytes).sum();
    sparse || (smalls.len() >= 2 && small_live >= small)
}

/// `rows` (in offset order) cut into runs whose frames span at most
/// [`WINDOW`] bytes of their pack (a single larger frame is a run alone).
fn windows(rows: &[ChunkRecord]) -> Vec<&[ChunkRecord]> {
    let at = |r: &ChunkRecord| r.pack_offset.unwrap_or(0).max(0) as u64;
    let end = |r: &ChunkRecord| at(r) + r.file_size.max(0) as u64;
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=rows.len() {
        if i == rows.len() || end(&rows[i]) - at(&rows[start]) > WINDOW {
            out.push(&rows[start..i]);
            start = i;
        }
    }
    out
}

/// The frames of `rows` (all in `pack`, in offset order), read with one
/// ranged read over the span they cover.
async fn read_live_frames(
    svc: &Services,
    pack: i64,
    rows: &[ChunkRecord],
) -> anyhow::Result<Vec<Bytes>> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(Vec::new());
    };
    let at = |r: &ChunkRecord| r.pack_offset.unwrap_or(0).max(0) as u64;
    let (start, end) = (at(first), at(last) + last.file_size.max(0) as u64);
    let span = svc
        .chunks()
        .read_bytes(&pack_writer::key(pack), Some(start..end))
        .await?;
    rows.iter()
        .map(|r| {
            let (from, len) = ((at(r) - start) as usize, r.file_size.max(0) as usize);
            span.get(from..from + len)
                .map(|_| span.slice(from..from + len))
                .with_context(|| format!("pack {pack} is shorter than its rows say"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use larder_shared::chunk::ChunkHash;
    use larder_shared::db::ChunkId;

    fn row(offset: i64, size: i32) -> ChunkRecord {
        ChunkRecord {
            id: ChunkId(offset),
            hash: ChunkHash::of(&offset.to_le_bytes()),
            chunk_size: size,
            file_size: size,
            pack_id: Some(1),
            pack_offset: Some(offset),
            refcount: 1,
        }
    }

    #[test]
    fn windows_bound_what_is_read_at_once() {
        let mib = 1024 * 1024;
        let rows: Vec<ChunkRecord> = (0..40).map(|i| row(i * mib, mib as i32)).collect();
        let w = windows(&rows);
        assert_eq!(w.iter().map(|w| w.len()).collect::<Vec<_>>(), [16, 16, 8]);
        let big = [row(0, 20 * mib as i32), row(20 * mib, 1)];
        assert_eq!(
            windows(&big).len(),
            2,
            "an oversized frame is a window alone"
        );
        assert!(windows(&[]).is_empty());
    }

    #[test]
    fn merging_needs_a_sparse_pack_or_enough_small_ones() {
        let p = |size, live| PackUse {
            id: 1,
            size,
            live_chunks: 1,
            live_bytes: live,
            created_at: 0,
            level: None,
        };
        assert!(worth_it(&[p(100, 10)], 0.5, 25));
        assert!(!worth_it(&[p(20, 20)], 0.5, 25));
        assert!(!worth_it(&[p(10, 10), p(10, 10)], 0.5, 25));
        assert!(worth_it(&[p(15, 15), p(15, 15)], 0.5, 25));
    }
}
