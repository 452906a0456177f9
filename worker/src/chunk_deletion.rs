//! The one way a chunk object leaves storage (docs/gc.md, "Who may delete
//! an object"): GC's chunk and orphan phases and both deletions of `verify`
//! go through [`delete`].
//!
//! Invariant: an object is deleted only if, at the moment of deletion, no
//! committed row can reference it and no in-flight write can produce a row
//! that does. Per batch of keys:
//!
//! 1. [`claim`] commits a deletion claim on every key.
//! 2. [`Claimed::finish`], in separate statements after that commit:
//!    deletes the intents on those keys older than the grace period (their
//!    writer died or stalled; its commit now fails), then reads the
//!    remaining intents, then the chunk rows. A key with an intent, or with
//!    a row other than the one this deleter marked, is kept: its mark is
//!    undone and its claim released.
//! 3. Otherwise the object is deleted, then, in one transaction, the marked
//!    row and the claim. A crash before that leaves the claim (and the
//!    marked row), which the next GC finishes.
//!
//! Ingest commits its intent before it looks for claims, and a deleter its
//! claim before it looks for intents: whichever commits second sees the
//! other. Reading intents before rows matters: an ingest's commit removes
//! its intents and adds its rows atomically, so a deleter reading in this
//! order sees at least one of them.

use std::collections::HashSet;

use larder_shared::chunk::ChunkHash;
use larder_shared::chunk_store::ChunkStore;
use larder_shared::db::ChunkId;
use larder_shared::db::chunk_claims;
use larder_shared::db::chunk_gc;
use larder_shared::db::chunks::{self, BATCH, ChunkRecord};
use larder_shared::db::packs;
use larder_shared::db::refcounts;
use larder_shared::storage::ObjectKey;
use larder_shared::storage::layout;

use crate::gc_lease::GcLease;

mod orphans;
use crate::services::Services;
pub use orphans::{delete_empty_packs, delete_orphan_objects, delete_retired_objects};

/// What a doomed object holds, and so which rows would name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    /// One chunk stored as its own object: named by that chunk's row.
    Chunk(ChunkHash),
    /// A pack: named by every chunk row located in it.
    Pack(i64),
}

/// An object to delete.
#[derive(Debug, Clone)]
pub struct Doomed {
    /// Its storage key.
    pub key: ObjectKey,
    /// What it holds.
    pub holds: Holds,
    /// The row this deleter marked (`refcount = -1`), deleted with the
    /// object; `None` for an object no row should name (an orphan, or a
    /// pack whose chunks are all gone).
    pub marked: Option<ChunkId>,
    /// Stored bytes freed.
    pub file_size: u64,
}

impl Doomed {
    /// A chunk marked for deletion, or `None` if it lives in a pack (its
    /// row goes alone; the pack is freed when empty, [`delete_empty_packs`]).
    pub fn marked(rec: &ChunkRecord) -> Option<Self> {
        rec.pack_id.is_none().then(|| Self {
            key: ChunkStore::own_object(&rec.hash),
            holds: Holds::Chunk(rec.hash),
            marked: Some(rec.id),
            file_size: rec.file_size.max(0) as u64,
        })
    }

    /// An object no row should name, or `None` if the key is neither a
    /// chunk object's (`chunks/ab/cd/<sha256>.zst`) nor a pack's.
    pub fn orphan(key: &str) -> Option<Self> {
        if let Some(id) = layout::parse_pack_key(key) {
            return Some(Self::pack(id, 0));
        }
        let hash = layout::parse_chunk_key(key)?;
        Some(Self {
            key: ChunkStore::own_object(&hash),
            holds: Holds::Chunk(hash),
            marked: None,
            file_size: 0,
        })
    }

    /// A pack of `size` bytes no chunk row should locate a frame in.
    pub fn pack(id: i64, size: u64) -> Self {
        Self {
            key: layout::pack_key(id),
            holds: Holds::Pack(id),
            marked: None,
            file_size: size,
        }
    }
}

/// What [`delete`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    /// Objects deleted.
    pub objects: u64,
    /// Marked rows deleted with them.
    pub rows: u64,
    /// Their recorded stored size.
    pub bytes: u64,
    /// Keys kept: a writer intends them, or a row needs them.
    pub kept: u64,
}

impl std::ops::AddAssign for Deleted {
    fn add_assign(&mut self, o: Self) {
        self.objects += o.objects;
        self.rows += o.rows;
        self.bytes += o.bytes;
        self.kept += o.kept;
    }
}

/// Claims, checks and deletes `doomed` in batches of [`BATCH`]. `now` and
/// the lease's clock stamp claims; intents last refreshed before
/// `stale_cutoff` are reclaimed.
pub async fn delete(
    svc: &Services,
    lease: &GcLease,
    doomed: Vec<Doomed>,
    stale_cutoff: i64,
) -> anyhow::Result<Deleted> {
    let mut total = Deleted::default();
    let mut doomed = doomed;
    while !doomed.is_empty() {
        let rest = doomed.split_off(doomed.len().min(BATCH));
        total += claim(svc, lease, doomed)
            .await?
            .finish(svc, lease, stale_cutoff)
            .await?;
        doomed = rest;
    }
    Ok(total)
}

/// Step 1: a batch whose claims are committed.
#[must_use = "claims block writers until finished"]
pub struct Claimed {
    doomed: Vec<Doomed>,
}

/// Step 1: commits claims on ≤ [`BATCH`] keys.
pub async fn claim(
    svc: &Services,
    lease: &GcLease,
    doomed: Vec<Doomed>,
) -> anyhow::Result<Claimed> {
    anyhow::ensure!(doomed.len() <= BATCH, "claim batches hold at most {BATCH}");
    let keys: Vec<ObjectKey> = doomed.iter().map(|d| d.key.clone()).collect();
    let mut conn = svc.db.conn().await?;
    chunk_claims::claim(conn.raw(), &keys, lease.now()).await?;
    Ok(Claimed { doomed })
}

impl Claimed {
    /// Steps 2 and 3 (see the module doc).
    pub async fn finish(
        self,
        svc: &Services,
        lease: &GcLease,
        stale_cutoff: i64,
    ) -> anyhow::Result<Deleted> {
        let keys: Vec<ObjectKey> = self.doomed.iter().map(|d| d.key.clone()).collect();
        let (hashes, pack_ids) = split_holds(&self.doomed);
        let (intended, rows, named_packs) = {
            let mut conn = svc.db.conn().await?;
            chunk_claims::reclaim_stale(conn.raw(), &keys, stale_cutoff).await?;
            // Intents first, then rows (module doc).
            let intended: HashSet<String> = chunk_claims::intended(conn.raw(), &keys)
                .await?
                .into_iter()
                .collect();
            let rows = chunks::find_by_hashes(conn.raw(), &hashes).await?;
            let named_packs = packs::named_by_chunks(conn.raw(), &pack_ids).await?;
            (intended, rows, named_packs)
        };
        let (clear, kept): (Vec<Doomed>, Vec<Doomed>) = self.doomed.into_iter().partition(|d| {
            let needed = match d.holds {
                // A row names a chunk's own object only while the chunk is
                // not packed (repack moves rows into packs).
                Holds::Chunk(hash) => match rows.get(&hash) {
                    Some(row) if row.pack_id.is_none() => {
                        d.marked != Some(row.id) || row.refcount >= 0
                    }
                    _ => false,
                },
                Holds::Pack(id) => named_packs.contains(&id),
            };
            !needed && !intended.contains(d.key.as_str())
        });
        let mut done = Deleted {
            kept: kept.len() as u64,
            ..Deleted::default()
        };
        if !kept.is_empty() {
            let ids: Vec<ChunkId> = kept.iter().filter_map(|d| d.marked).collect();
            let keys: Vec<ObjectKey> = kept.iter().map(|d| d.key.clone()).collect();
            let mut tx = svc.db.begin().await?;
            refcounts::unmark_chunks(tx.raw(), &ids, lease.now()).await?;
            chunk_claims::release_claims(tx.raw(), &keys).await?;
            chunk_claims::forget_retired(tx.raw(), &keys).await?;
            tx.commit().await?;
        }
        if clear.is_empty() {
            return Ok(done);
        }
        // A deleter that lost its lease stops here rather than delete.
        lease.renew(svc).await?;
        let chunks = svc.chunks();
        for d in &clear {
            chunks.delete(&d.key).await?;
        }
        let ids: Vec<ChunkId> = clear.iter().filter_map(|d| d.marked).collect();
        let keys: Vec<ObjectKey> = clear.iter().map(|d| d.key.clone()).collect();
        let (_, packs_gone) = split_holds(&clear);
        let mut tx = svc.db.begin().await?;
        done.rows = chunk_gc::delete_marked_chunks(tx.raw(), &ids).await?;
        packs::delete(tx.raw(), &packs_gone).await?;
        chunk_claims::release_claims(tx.raw(), &keys).await?;
        chunk_claims::forget_retired(tx.raw(), &keys).await?;
        tx.commit().await?;
        done.objects = clear.len() as u64;
        done.bytes = clear.iter().map(|d| d.file_size).sum();
        Ok(done)
    }
}

/// Finishes chunks a crashed GC (or verify) marked, then deletes chunks
/// unreferenced since `cutoff`: mark (`refcount = -1`), then
/// [`delete`] (claim, check, delete object, delete row).
pub async fn delete_unreferenced(
    svc: &Services,
    lease: &GcLease,
    cutoff: i64,
) -> anyhow::Result<Deleted> {
    let mut total = Deleted::default();
    loop {
        let marked = {
            let mut conn = svc.db.conn().await?;
            chunk_gc::deleting_chunks(conn.raw(), BATCH as i64).await?
        };
        if marked.is_empty() {
            break;
        }
        total += delete_marked(svc, lease, &marked, cutoff).await?;
        lease.renew(svc).await?;
    }
    loop {
        let candidates = {
            let mut conn = svc.db.conn().await?;
            chunk_gc::unreferenced_chunks(conn.raw(), cutoff, BATCH as i64).await?
        };
        if candidates.is_empty() {
            break;
        }
        let ids: Vec<ChunkId> = candidates.iter().map(|c| c.id).collect();
        let marked: HashSet<ChunkId> = {
            let mut tx = svc.db.begin().await?;
            let m = refcounts::mark_deleting(tx.raw(), &ids, cutoff).await?;
            tx.commit().await?;
            m.into_iter().collect()
        };
        let marked: Vec<ChunkRecord> = candidates
            .into_iter()
            .filter(|c| marked.contains(&c.id))
            .collect();
        // Kept chunks restart their grace period (`unmark_chunks`), so the
        // scan moves on.
        total += delete_marked(svc, lease, &marked, cutoff).await?;
        lease.renew(svc).await?;
    }
    Ok(total)
}

/// Deletes chunks marked `refcount = -1` (≤ [`BATCH`]): their objects and
/// rows through [`delete`], which keeps (and unmarks) those a writer
/// is storing again. Rows of chunks in packs go without an object.
pub async fn delete_marked(
    svc: &Services,
    lease: &GcLease,
    marked: &[ChunkRecord],
    stale_cutoff: i64,
) -> anyhow::Result<Deleted> {
    let doomed: Vec<Doomed> = marked.iter().filter_map(Doomed::marked).collect();
    let mut done = delete(svc, lease, doomed, stale_cutoff).await?;
    let packed: Vec<ChunkId> = marked
        .iter()
        .filter(|c| c.pack_id.is_some())
        .map(|c| c.id)
        .collect();
    if !packed.is_empty() {
        // The rows and their packs' live counts in one transaction; the
        // frames stay as dead space until the pack is empty or compacted.
        let mut tx = svc.db.begin().await?;
        let gone = chunk_gc::delete_marked_packed(tx.raw(), &packed).await?;
        packs::remove_live(tx.raw(), &packs::by_pack(gone.iter().copied())).await?;
        tx.commit().await?;
        done.rows += gone.len() as u64;
    }
    Ok(done)
}

/// The chunk hashes and the pack ids `doomed` objects hold.
fn split_holds(doomed: &[Doomed]) -> (Vec<ChunkHash>, Vec<i64>) {
    let mut hashes = Vec::new();
    let mut pack_ids = Vec::new();
    for d in doomed {
        match d.holds {
            Holds::Chunk(h) => hashes.push(h),
            Holds::Pack(id) => pack_ids.push(id),
        }
    }
    (hashes, pack_ids)
}
