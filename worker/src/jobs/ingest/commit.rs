//! The transaction that makes an ingested NAR ready: new chunk rows, added
//! references and the layout downloads seek by.

use std::collections::{BTreeSet, HashMap};

use anyhow::{Context, bail};

use larder_shared::chunk::ChunkHash;
use larder_shared::db::chunk_claims;
use larder_shared::db::chunks::{self, BATCH, NewChunk};
use larder_shared::db::layout_epoch;
use larder_shared::db::nar_layout::NarLayoutBuilder;
use larder_shared::db::nars;
use larder_shared::db::packs;
use larder_shared::db::refcounts;
use larder_shared::db::{ChunkId, Raw, staging_intents, unix_now};

use super::run_commit::{RunCommit, Slot};
use crate::services::Services;

/// In one transaction: removes this run's `intents` (failing if a deleter
/// reclaimed any), records the new chunks already holding this NAR's
/// reference (`refcount = 1`, so their rows never change an index again
/// while referenced), adds a reference to every reused chunk (only if GC is
/// not deleting it), and makes the NAR ready, handing its staged copy at
/// `staged` to a staging intent for deletion (docs/gc.md "Staging objects").
/// False when another run finished first (ours then changes nothing).
pub(super) async fn commit(svc: &Services, run: &RunCommit) -> anyhow::Result<bool> {
    let RunCommit {
        owner,
        intents,
        nar_id,
        staged,
        slots,
        new,
        sealed,
    } = run;
    let (intents, nar_id) = (*intents, *nar_id);
    let mut tx = svc.db.begin().await?;
    // The NAR's row before any chunk row: GC's orphan deletion locks in
    // that order too.
    nars::lock(tx.raw(), nar_id).await?;
    if chunk_claims::release_intents(tx.raw(), owner).await? != intents {
        // GC took an intent of ours for a dead writer's and may have deleted
        // its object: roll back; the retry writes it again.
        bail!("GC reclaimed a write intent of this ingest as stale; retrying");
    }
    // Before any chunk row the layout is computed from (db::layout_epoch);
    // after a write, so SQLite's transaction holds the write lock already.
    let epoch = layout_epoch::current(tx.raw()).await?;
    let mut ids: HashMap<ChunkHash, ChunkId> = HashMap::new();
    // Chunks another ingest recorded since our lookup: reused, not inserted.
    let mut reused: BTreeSet<ChunkId> = slots
        .iter()
        .filter_map(|s| match s {
            Slot::Known(id) => Some(*id),
            Slot::New(_) => None,
        })
        .collect();
    // By hash: concurrent commits insert shared hashes in the same order.
    let mut new: Vec<NewChunk> = new.values().cloned().collect();
    new.sort_by_key(|n| n.hash);
    // Frames of the rows this commit inserts, by pack: the packs' live counts.
    let mut live: Vec<(i64, i64)> = Vec::new();
    for batch in new.chunks(BATCH) {
        let inserted = refcounts::insert_referenced(tx.raw(), batch).await?;
        live.extend(batch.iter().filter_map(|n| {
            let (pack, _) = n.pack?;
            inserted
                .contains_key(&n.hash)
                .then_some((pack, i64::from(n.file_size)))
        }));
        let rest: Vec<ChunkHash> = batch
            .iter()
            .map(|n| n.hash)
            .filter(|h| !inserted.contains_key(h))
            .collect();
        ids.extend(inserted);
        for (h, id) in recorded_first(tx.raw(), rest).await? {
            ids.insert(h, id);
            reused.insert(id);
        }
    }
    // Sorted: concurrent commits lock shared chunk rows in the same order.
    let reused: Vec<ChunkId> = reused.into_iter().collect();
    for batch in reused.chunks(BATCH) {
        let updated = refcounts::add_refs(tx.raw(), batch).await?;
        if updated != batch.len() as u64 {
            // GC is deleting a chunk we meant to reuse: roll back and retry;
            // the next run will find it gone and store it again.
            bail!("a reused chunk is being garbage-collected; retrying");
        }
    }
    let chunk_ids: Vec<ChunkId> = slots
        .iter()
        .map(|s| match s {
            Slot::Known(id) => Ok(*id),
            Slot::New(h) => ids.get(h).copied().context("new chunk has no id"),
        })
        .collect::<anyhow::Result<_>>()?;
    // After the chunk rows, ascending (the lock order of docs/gc.md). Every
    // pack the run wrote gets its row, also one none of whose frames became
    // a row here (a concurrent ingest stored those chunks first): once this
    // commit releases the run's intents, the row is what GC finds it by.
    let deltas = packs::by_pack(live);
    if let Some(pack) = deltas.keys().find(|p| !sealed.contains_key(p)) {
        bail!("a new chunk names pack {pack}, which this run did not seal");
    }
    for (id, s) in sealed {
        let delta = deltas.get(id).copied().unwrap_or_default();
        let level = svc.config.compression.level;
        packs::add_live(tx.raw(), (s.id, s.size, s.chunks), level, delta, unix_now()).await?;
    }
    // The layout the read path seeks by, from the rows as committed.
    let (mut file_size, mut layout) = (0i64, NarLayoutBuilder::default());
    for batch in chunk_ids.chunks(BATCH) {
        let recs = chunks::get_many(tx.raw(), &dedup(batch)).await?;
        for id in batch {
            let rec = recs.get(id).context("chunk vanished")?;
            file_size += i64::from(rec.file_size);
            layout.push(rec)?;
        }
    }
    let layout = layout.finish();
    if !nars::mark_ready(
        tx.raw(),
        nar_id,
        &chunk_ids,
        (&layout, epoch),
        file_size,
        unix_now(),
    )
    .await?
    {
        return Ok(false);
    }
    staging_intents::release(tx.raw(), staged, unix_now()).await?;
    tx.commit().await?;
    Ok(true)
}

/// The ids of `hashes`, new chunks whose insert found a row: another
/// commit recorded them since this run's lookup, so they are reused. Fails
/// (the run retries) if one vanished again or GC is deleting it.
pub(super) async fn recorded_first(
    raw: Raw<'_>,
    hashes: Vec<ChunkHash>,
) -> anyhow::Result<Vec<(ChunkHash, ChunkId)>> {
    if hashes.is_empty() {
        return Ok(Vec::new());
    }
    let found = chunks::find_by_hashes(raw, &hashes).await?;
    hashes
        .into_iter()
        .map(|h| {
            let rec = found
                .get(&h)
                .context("a chunk row vanished during ingest; retrying")?;
            if rec.refcount < 0 {
                bail!("a chunk of this NAR is being garbage-collected; retrying later");
            }
            Ok((h, rec.id))
        })
        .collect()
}

pub(super) fn dedup(ids: &[ChunkId]) -> Vec<ChunkId> {
    ids.iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}
