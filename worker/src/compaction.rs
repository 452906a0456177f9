//! Compaction (docs/gc.md "Compaction"): GC's last phase, under its lease,
//! so it runs once cluster-wide. It rewrites packs that are mostly dead
//! space (less than `[storage] compaction-threshold` live) and merges packs
//! smaller than a quarter of `pack-size`, copying their live frames, in
//! pack order, into new packs.
//!
//! Each new pack follows the writer's side of the deletion protocol: a
//! write intent on its key (owner: this compaction) before a byte is
//! written, the pack sealed and durable, then one transaction that moves
//! the rows still located in the old packs (`WHERE pack_id = old`, so a
//! row GC deleted meanwhile stays deleted), moves their live counts, marks
//! old packs that are now empty as retired and removes the intent (failing,
//! and rolling back, if a deleter reclaimed it). A retired pack is deleted a
//! grace period later, so a download that resolved a chunk's old location
//! just before the move still reads it. Frames are copied as they are (no
//! recompression), so every NAR's bytes, sizes and ETags stay the same.
//!
//! A crash before a move commits leaves a new pack no row names and its
//! intent, which GC deletes once the intent is stale; after it, a
//! consistent store.

use anyhow::{Context, bail};
use bytes::Bytes;

use larder_shared::chunk_store::pack_writer::{self, PackWriter, SealedPack};
use larder_shared::db::chunks::{self, BATCH, ChunkRecord};
use larder_shared::db::packs::{self, LiveDelta, PackUse};
use larder_shared::db::{ChunkId, chunk_claims, refcounts, unix_now};
use larder_shared::storage::ObjectKey;

use crate::gc_lease::GcLease;
use crate::services::Services;

/// Packs weighed per GC.
const CANDIDATES: i64 = 1000;

/// What a compaction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Compacted {
    /// Old packs all of whose live chunks moved (retired; deleted a grace
    /// period later).
    pub packs_retired: u64,
    /// New packs written.
    pub packs_written: u64,
    /// Chunk rows moved.
    pub chunks_moved: u64,
    /// Stored bytes moved.
    pub bytes_moved: u64,
}

/// One chunk's copy: its row, the pack it left, and where it went.
struct Move {
    id: ChunkId,
    from: i64,
    offset: i64,
    file_size: i64,
}

/// Rewrites the packs worth it at `now` (packs younger than the grace
/// period are left alone: their writers may still be committing).
pub async fn compact(svc: &Services, lease: &GcLease, now: i64) -> anyhow::Result<Compacted> {
    let storage = &svc.config.storage;
    let threshold = storage.compaction_threshold;
    let mut done = Compacted::default();
    if threshold <= 0.0 || storage.pack_size == 0 {
        return Ok(done);
    }
    let grace = svc.config.garbage_collection.grace_period.as_secs() as i64;
    let small = (storage.pack_size / 4) as i64;
    let candidates = {
        let mut conn = svc.db.conn().await?;
        packs::compaction_candidates(conn.raw(), threshold, small, now - grace, CANDIDATES).await?
    };
    if !worth_it(&candidates, threshold, small) {
        return Ok(done);
    }
    let owner = format!("compact-{}", ulid::Ulid::new());
    let mut out: Option<PackWriter> = None;
    let mut moves: Vec<Move> = Vec::new();
    for pack in &candidates {
        let rows = {
            let mut conn = svc.db.conn().await?;
            chunks::in_pack(conn.raw(), pack.id).await?
        };
        for window in windows(&rows) {
            let frames = read_live_frames(svc, pack.id, window).await?;
            for (rec, frame) in window.iter().zip(frames) {
                let writer = match out.as_mut() {
                    Some(w) => w,
                    None => out.insert(open(svc, &owner).await?),
                };
                let entry = writer
                    .append(rec.hash, rec.chunk_size.max(0) as u32, frame)
                    .await?;
                moves.push(Move {
                    id: rec.id,
                    from: pack.id,
                    offset: entry.offset as i64,
                    file_size: i64::from(rec.file_size),
                });
                if writer.len() >= storage.pack_size
                    && let Some(full) = out.take()
                {
                    let sealed = full.seal().await?;
                    done += commit(svc, &owner, &sealed, std::mem::take(&mut moves), now).await?;
                    lease.renew(svc).await?;
                }
            }
        }
    }
    if let Some(last) = out.take() {
        let sealed = last.seal().await?;
        done += commit(svc, &owner, &sealed, moves, now).await?;
    }
    tracing::info!(?done, "compaction finished");
    Ok(done)
}

/// Whether rewriting `candidates` gains anything: a sparse pack, or small
/// packs that together fill at least a quarter pack (merging fewer would
/// only make another small pack).
fn worth_it(candidates: &[PackUse], threshold: f64, small: i64) -> bool {
    let sparse = candidates
        .iter()
        .any(|p| (p.live_bytes as f64) < p.size as f64 * threshold);
    let small_live: i64 = candidates
        .iter()
        .filter(|p| p.size < small)
        .map(|p| p.live_bytes)
        .sum();
    let smalls = candidates.iter().filter(|p| p.size < small).count();
    sparse || (smalls >= 2 && small_live >= small)
}

/// Most bytes of old packs read into memory at once.
const WINDOW: u64 = 16 * 1024 * 1024;

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

/// A new pack with this compaction's intent committed on its key.
async fn open(svc: &Services, owner: &str) -> anyhow::Result<PackWriter> {
    let mut conn = svc.db.conn().await?;
    let id = packs::next_id(conn.raw(), unix_now()).await?;
    let key = [pack_writer::key(id)];
    chunk_claims::insert_intents(conn.raw(), owner, &key, unix_now()).await?;
    if !chunk_claims::claimed(conn.raw(), &key).await?.is_empty() {
        bail!("a fresh pack key is claimed for deletion; compaction stops");
    }
    Ok(svc.chunks().open_pack(id))
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
    let start = first
        .pack_offset
        .context("packed row without offset")?
        .max(0) as u64;
    let end = last
        .pack_offset
        .context("packed row without offset")?
        .max(0) as u64
        + last.file_size.max(0) as u64;
    let span = svc
        .chunks()
        .read_object(&pack_writer::key(pack), start..end)
        .await?;
    let parts: Vec<Bytes> = futures::TryStreamExt::try_collect(span).await?;
    let span = Bytes::from(parts.concat());
    rows.iter()
        .map(|r| {
            let at = (r.pack_offset.unwrap_or(0).max(0) as u64 - start) as usize;
            let len = r.file_size.max(0) as usize;
            span.get(at..at + len)
                .map(|_| span.slice(at..at + len))
                .with_context(|| format!("pack {pack} is shorter than its rows say"))
        })
        .collect()
}

/// Moves `moves` into `sealed` in one transaction (module doc).
async fn commit(
    svc: &Services,
    owner: &str,
    sealed: &SealedPack,
    moves: Vec<Move>,
    now: i64,
) -> anyhow::Result<Compacted> {
    let mut tx = svc.db.begin().await?;
    let mut ids: Vec<ChunkId> = moves.iter().map(|m| m.id).collect();
    ids.sort();
    for batch in ids.chunks(BATCH) {
        refcounts::lock_in_order(tx.raw(), batch).await?;
    }
    let mut left: Vec<(i64, i64)> = Vec::new();
    for m in &moves {
        if packs::move_chunk(tx.raw(), m.id, m.from, (sealed.id, m.offset)).await? {
            left.push((m.from, m.file_size));
        }
    }
    let gone = packs::by_pack(left.iter().copied());
    let arrived = LiveDelta {
        chunks: left.len() as i64,
        bytes: left.iter().map(|(_, b)| b).sum(),
    };
    // Old packs have smaller ids than the new one: ascending lock order.
    packs::remove_live(tx.raw(), &gone).await?;
    packs::add_live(
        tx.raw(),
        (sealed.id, sealed.size, sealed.chunks),
        arrived,
        now,
    )
    .await?;
    let from: Vec<i64> = gone.keys().copied().collect();
    let retired = packs::retire(tx.raw(), &from, now).await?;
    let key: [ObjectKey; 1] = [pack_writer::key(sealed.id)];
    if chunk_claims::drop_intents(tx.raw(), owner, &key).await? != 1 {
        bail!(
            "GC reclaimed compaction's write intent on pack {} as stale",
            sealed.id
        );
    }
    tx.commit().await?;
    Ok(Compacted {
        packs_retired: retired,
        packs_written: 1,
        chunks_moved: arrived.chunks as u64,
        bytes_moved: arrived.bytes as u64,
    })
}

impl std::ops::AddAssign for Compacted {
    fn add_assign(&mut self, o: Self) {
        self.packs_retired += o.packs_retired;
        self.packs_written += o.packs_written;
        self.chunks_moved += o.chunks_moved;
        self.bytes_moved += o.bytes_moved;
    }
}
