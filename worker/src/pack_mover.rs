//! Moving chunks that are already stored into new packs: what compaction
//! (old packs into new ones) and `larder-admin repack` (chunks stored one
//! per object into packs) share (docs/gc.md "Compaction").
//!
//! Each new pack is written as an ingest writes one: a write intent on its
//! key (owner: this mover) and a claim check before the first byte, then the
//! pack sealed and durable, then one transaction that moves the rows still
//! where they were (`WHERE pack_id = old`, or `IS NULL` for a chunk's own
//! object: a row GC deleted meanwhile stays deleted, its copy is dead
//! space), moves their live counts, retires old packs left empty, records
//! own objects left unnamed as retired objects, and removes the intent
//! (rolling back if a deleter reclaimed it as stale). Retired packs and
//! objects are deleted by GC a grace period later, so a download that read a
//! chunk's old location just before the move still finds it.
//!
//! Frames are copied byte for byte (NAR bytes, sizes and ETags never
//! change), unless the caller hands in a recompressed frame: then the same
//! transaction records the previous frame ([`replaced_frames`]: downloads
//! that promised its size read it there) and starts a new layout epoch
//! ([`layout_epoch`]: stored NAR layouts are recomputed). Each pack holds
//! frames of one zstd level, recorded in its row.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use anyhow::bail;
use bytes::Bytes;

use larder_shared::chunk_store::ChunkStore;
use larder_shared::chunk_store::pack_writer::{self, PackWriter, SealedPack};
use larder_shared::db::chunks::{BATCH, ChunkRecord};
use larder_shared::db::packs::{self, LiveDelta};
use larder_shared::db::replaced_frames::{self, ReplacedFrame};
use larder_shared::db::{ChunkId, chunk_claims, layout_epoch, refcounts};
use larder_shared::metrics::moves::{self, MoveCounts};
use larder_shared::storage::ObjectKey;

use crate::gc_lease::GcLease;
use crate::jobs::ingest::BeforeCommit;
use crate::services::Services;
use crate::write_intents::Writer;

/// What a mover did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Moved {
    /// Old packs left without live chunks (retired; deleted a grace period
    /// later).
    pub packs_retired: u64,
    /// Own chunk objects left unnamed (retired likewise).
    pub objects_retired: u64,
    /// New packs written.
    pub packs_written: u64,
    /// Chunk rows moved.
    pub chunks_moved: u64,
    /// Stored bytes moved (as they were before the move).
    pub bytes_moved: u64,
    /// Chunks whose frame was recompressed smaller.
    pub chunks_recompressed: u64,
    /// Stored bytes those frames shed.
    pub bytes_saved: u64,
}

impl std::ops::AddAssign for Moved {
    fn add_assign(&mut self, o: Self) {
        self.packs_retired += o.packs_retired;
        self.objects_retired += o.objects_retired;
        self.packs_written += o.packs_written;
        self.chunks_moved += o.chunks_moved;
        self.bytes_moved += o.bytes_moved;
        self.chunks_recompressed += o.chunks_recompressed;
        self.bytes_saved += o.bytes_saved;
    }
}

/// One chunk's copy: its row (where it was), where it went, and its stored
/// size there.
struct Move {
    rec: ChunkRecord,
    offset: i64,
    file_size: i32,
}

/// A pack being filled with frames of one level.
struct Output {
    pack: PackWriter,
    moves: Vec<Move>,
}

/// Copies frames into new packs of `[storage] pack-size`, one open pack per
/// zstd level, committing each pack's moves once it is sealed.
pub struct Mover<'a> {
    svc: &'a Services,
    lease: &'a GcLease,
    writer: Writer,
    now: i64,
    pause: Option<&'a BeforeCommit>,
    outs: BTreeMap<i32, Output>,
    done: Moved,
}

impl<'a> Mover<'a> {
    /// A mover named `kind` (`compact`, `repack`) holding the GC lease;
    /// `pause` stops it before each commit (tests of a killed mover).
    pub fn new(
        svc: &'a Services,
        lease: &'a GcLease,
        kind: &str,
        now: i64,
        pause: Option<&'a BeforeCommit>,
    ) -> Self {
        Self {
            svc,
            lease,
            writer: Writer::new(kind),
            now,
            pause,
            outs: BTreeMap::new(),
            done: Moved::default(),
        }
    }

    /// Copies `frame`, the frame of `rec` compressed at `level` (its stored
    /// frame, or that recompressed), into the open pack of that level.
    pub async fn push(
        &mut self,
        rec: &ChunkRecord,
        frame: Bytes,
        level: i32,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            frame.len() as u64 == rec.file_size.max(0) as u64 || rec.pack_id.is_some(),
            "only packed chunks are recompressed"
        );
        let file_size = i32::try_from(frame.len())?;
        let out = match self.outs.get_mut(&level) {
            Some(o) => o,
            None => {
                let pack = self.writer.open_pack(self.svc).await?;
                self.outs.entry(level).or_insert(Output {
                    pack,
                    moves: Vec::new(),
                })
            }
        };
        let entry = out
            .pack
            .append(rec.hash, rec.chunk_size.max(0) as u32, frame)
            .await?;
        out.moves.push(Move {
            rec: rec.clone(),
            offset: entry.offset as i64,
            file_size,
        });
        if out.pack.len() >= self.svc.config.storage.pack_size {
            self.seal_and_commit(level).await?;
            self.lease.renew(self.svc).await?;
        }
        Ok(())
    }

    /// Seals the open packs, commits their moves, and reports the total.
    pub async fn finish(mut self) -> anyhow::Result<Moved> {
        let levels: Vec<i32> = self.outs.keys().copied().collect();
        for level in levels {
            self.seal_and_commit(level).await?;
        }
        Ok(self.done)
    }

    async fn seal_and_commit(&mut self, level: i32) -> anyhow::Result<()> {
        let Some(full) = self.outs.remove(&level) else {
            return Ok(());
        };
        let sealed = full.pack.seal().await?;
        if let Some(p) = self.pause {
            p.hold().await;
        }
        let into = (&sealed, level);
        self.done += commit(self.svc, &self.writer, into, full.moves, self.now).await?;
        Ok(())
    }
}

/// Moves `moves` into `sealed` (frames of `level`) in one transaction
/// (module doc).
async fn commit(
    svc: &Services,
    writer: &Writer,
    (sealed, level): (&SealedPack, i32),
    moves: Vec<Move>,
    now: i64,
) -> anyhow::Result<Moved> {
    let mut tx = svc.db.begin().await?;
    let mut ids: Vec<ChunkId> = moves.iter().map(|m| m.rec.id).collect();
    ids.sort();
    for batch in ids.chunks(BATCH) {
        refcounts::lock_in_order(tx.raw(), batch).await?;
    }
    let (mut left_packs, mut left_objects) = (Vec::new(), Vec::new());
    let mut arrived = LiveDelta::default();
    let mut done = Moved {
        packs_written: 1,
        ..Moved::default()
    };
    for m in &moves {
        let to = (sealed.id, m.offset, m.file_size);
        if !packs::move_chunk(tx.raw(), m.rec.id, m.rec.pack_id, to).await? {
            continue;
        }
        arrived.chunks += 1;
        arrived.bytes += i64::from(m.file_size);
        done.bytes_moved += m.rec.file_size.max(0) as u64;
        match (m.rec.pack_id, m.rec.pack_offset) {
            (Some(from), Some(offset)) => {
                left_packs.push((from, i64::from(m.rec.file_size)));
                if m.file_size != m.rec.file_size {
                    let previous = ReplacedFrame {
                        pack_id: from,
                        pack_offset: offset,
                        file_size: m.rec.file_size,
                    };
                    replaced_frames::insert(tx.raw(), m.rec.id, previous, now).await?;
                    done.chunks_recompressed += 1;
                    done.bytes_saved += i64::from(m.rec.file_size - m.file_size).max(0) as u64;
                }
            }
            _ => left_objects.push(ChunkStore::own_object(&m.rec.hash)),
        }
    }
    // Every stored layout is stale from the commit on: their identity
    // (`frames_digest`) names the frames' old places, and downloads keep
    // chunk rows by it (chunk_store::nar_rows).
    if arrived.chunks > 0 {
        layout_epoch::bump(tx.raw()).await?;
    }
    let gone = packs::by_pack(left_packs);
    // Old packs have smaller ids than the new one: ascending lock order.
    packs::remove_live(tx.raw(), &gone).await?;
    let row = (sealed.id, sealed.size, sealed.chunks);
    packs::add_live(tx.raw(), row, level, arrived, now).await?;
    let from: Vec<i64> = gone.keys().copied().collect();
    done.packs_retired = packs::retire(tx.raw(), &from, now).await?;
    for batch in left_objects.chunks(BATCH) {
        chunk_claims::retire(tx.raw(), batch, now).await?;
    }
    let key: [ObjectKey; 1] = [pack_writer::key(sealed.id)];
    if chunk_claims::drop_intents(tx.raw(), &writer.owner, &key).await? != 1 {
        bail!(
            "GC reclaimed the write intent on pack {} as stale",
            sealed.id
        );
    }
    tx.commit().await?;
    writer.intents.fetch_sub(1, Ordering::SeqCst);
    done.objects_retired = left_objects.len() as u64;
    done.chunks_moved = arrived.chunks as u64;
    // Committed: progress an operator can watch (`/metrics`).
    moves::record(MoveCounts {
        chunks_moved: done.chunks_moved,
        bytes_moved: done.bytes_moved,
        chunks_recompressed: done.chunks_recompressed,
        bytes_saved: done.bytes_saved,
    });
    Ok(done)
}
