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
//! chunk's old location just before the move still finds it. Frames are
//! copied byte for byte: NAR bytes, sizes and ETags never change.

use std::sync::atomic::Ordering;

use anyhow::bail;
use bytes::Bytes;

use larder_shared::chunk_store::ChunkStore;
use larder_shared::chunk_store::pack_writer::{self, PackWriter, SealedPack};
use larder_shared::db::chunks::{BATCH, ChunkRecord};
use larder_shared::db::packs::{self, LiveDelta};
use larder_shared::db::{ChunkId, chunk_claims, refcounts};
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
    /// Stored bytes moved.
    pub bytes_moved: u64,
}

impl std::ops::AddAssign for Moved {
    fn add_assign(&mut self, o: Self) {
        self.packs_retired += o.packs_retired;
        self.objects_retired += o.objects_retired;
        self.packs_written += o.packs_written;
        self.chunks_moved += o.chunks_moved;
        self.bytes_moved += o.bytes_moved;
    }
}

/// One chunk's copy: its row, where it was, and where it went.
struct Move {
    rec: ChunkRecord,
    offset: i64,
}

/// Copies frames into new packs of `[storage] pack-size`, committing each
/// pack's moves once it is sealed.
pub struct Mover<'a> {
    svc: &'a Services,
    lease: &'a GcLease,
    writer: Writer,
    now: i64,
    pause: Option<&'a BeforeCommit>,
    out: Option<PackWriter>,
    moves: Vec<Move>,
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
            out: None,
            moves: Vec::new(),
            done: Moved::default(),
        }
    }

    /// Copies `rec`'s stored `frame` into the open pack.
    pub async fn push(&mut self, rec: &ChunkRecord, frame: Bytes) -> anyhow::Result<()> {
        let writer = match self.out.as_mut() {
            Some(w) => w,
            None => self.out.insert(self.writer.open_pack(self.svc).await?),
        };
        let entry = writer
            .append(rec.hash, rec.chunk_size.max(0) as u32, frame)
            .await?;
        self.moves.push(Move {
            rec: rec.clone(),
            offset: entry.offset as i64,
        });
        if writer.len() >= self.svc.config.storage.pack_size {
            self.seal_and_commit().await?;
            self.lease.renew(self.svc).await?;
        }
        Ok(())
    }

    /// Seals the open pack, commits its moves, and reports the total.
    pub async fn finish(mut self) -> anyhow::Result<Moved> {
        self.seal_and_commit().await?;
        Ok(self.done)
    }

    async fn seal_and_commit(&mut self) -> anyhow::Result<()> {
        let Some(full) = self.out.take() else {
            return Ok(());
        };
        let sealed = full.seal().await?;
        if let Some(p) = self.pause {
            p.hold().await;
        }
        let moves = std::mem::take(&mut self.moves);
        self.done += commit(self.svc, &self.writer, &sealed, moves, self.now).await?;
        Ok(())
    }
}

/// Moves `moves` into `sealed` in one transaction (module doc).
async fn commit(
    svc: &Services,
    writer: &Writer,
    sealed: &SealedPack,
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
    for m in &moves {
        let to = (sealed.id, m.offset);
        if !packs::move_chunk(tx.raw(), m.rec.id, m.rec.pack_id, to).await? {
            continue;
        }
        arrived.chunks += 1;
        arrived.bytes += i64::from(m.rec.file_size);
        match m.rec.pack_id {
            Some(from) => left_packs.push((from, i64::from(m.rec.file_size))),
            None => left_objects.push(ChunkStore::own_object(&m.rec.hash)),
        }
    }
    let gone = packs::by_pack(left_packs);
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
    let packs_retired = packs::retire(tx.raw(), &from, now).await?;
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
    Ok(Moved {
        packs_retired,
        objects_retired: left_objects.len() as u64,
        packs_written: 1,
        chunks_moved: arrived.chunks as u64,
        bytes_moved: arrived.bytes as u64,
    })
}
