//! `larder-admin verify [--repair]`: reconciles storage with the database.
//!
//! Verify holds the GC lease while it runs (every chunk-object deletion
//! does, docs/gc.md), so it waits for no GC and no GC runs meanwhile.
//!
//! 1. Storage objects under `chunks/` and `packs/` the database does not know are listed
//!    (the one place storage is listed: objects left by versions before
//!    write intents); with `--repair` those older than the grace period are
//!    deleted through [`crate::chunk_deletion`], which keeps any an ingest
//!    is writing. Objects under `staging/` that nothing names are listed
//!    too ([`staging`]); with `--repair` those older than `[staging]
//!    max-age` are deleted.
//! 2. Every chunk is read back: a missing object, a wrong length or a hash
//!    mismatch makes it damaged.
//! 3. Ready NARs listing a damaged chunk are marked broken (no longer served;
//!    a re-upload of the same NAR repairs them), their chunk references are
//!    released, and the damaged chunks are deleted (objects, then rows,
//!    through [`crate::chunk_deletion`]), so pushing the path again stores
//!    them afresh. The affected paths are
//!    reported per cache.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use serde::Serialize;

use larder_shared::chunk::{self, ChunkHash};
use larder_shared::db::chunks::{self, BATCH, ChunkRecord};
use larder_shared::db::{ChunkId, NarId, chunk_gc, verify};
use larder_shared::db::{chunk_claims, packs, refcounts};
use larder_shared::storage::{ObjectMeta, StorageError};

mod staging;

use crate::chunk_deletion::{self, Doomed};
use crate::gc_lease::GcLease;
use crate::services::Services;

/// What verify found and did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct VerifyReport {
    /// Chunk objects in storage the database does not know.
    pub orphan_objects: Vec<String>,
    /// Of those, how many were deleted (`--repair`, older than the grace period).
    pub orphans_deleted: u64,
    /// Objects the database does not know yet that a write intent names
    /// (being written, or left by a killed writer for GC to delete).
    pub pending_writes: Vec<String>,
    /// Staging objects no intent, NAR or pending upload names.
    pub orphan_staging: Vec<String>,
    /// Of those, how many were deleted (`--repair`, older than `[staging] max-age`).
    pub orphan_staging_deleted: u64,
    /// Chunks checked.
    pub chunks_checked: u64,
    /// Chunks missing or corrupt: (hash, problem).
    pub damaged_chunks: Vec<(String, String)>,
    /// NARs marked broken.
    pub nars_marked_broken: u64,
    /// Paths affected: (cache, store path).
    pub affected_paths: Vec<(String, String)>,
}

/// Runs verify at `now` (Unix seconds), holding the GC lease; fails if a
/// GC (or another verify) holds it.
pub async fn run(svc: &Services, now: i64, repair: bool) -> anyhow::Result<VerifyReport> {
    let holder = format!("verify-{}", ulid::Ulid::new());
    let Some(lease) = GcLease::acquire(svc, now, &holder).await? else {
        anyhow::bail!("a garbage collection is running; run verify again when it has finished");
    };
    let result = verify(svc, &lease, now, repair).await;
    lease.release(svc, false).await?;
    result
}

async fn verify(
    svc: &Services,
    lease: &GcLease,
    now: i64,
    repair: bool,
) -> anyhow::Result<VerifyReport> {
    let mut report = VerifyReport::default();
    find_orphans(svc, lease, now, repair, &mut report).await?;
    staging::find_orphans(svc, now, repair, &mut report).await?;
    let damaged = check_chunks(svc, lease, &mut report).await?;
    if !damaged.is_empty() {
        quarantine(svc, lease, now, &damaged, &mut report).await?;
    }
    Ok(report)
}

/// Lists chunk objects and packs the database does not know; with
/// `repair`, deletes those older than the grace period (unless an ingest is
/// writing them).
async fn find_orphans(
    svc: &Services,
    lease: &GcLease,
    now: i64,
    repair: bool,
    report: &mut VerifyReport,
) -> anyhow::Result<()> {
    let sweep = Sweep {
        svc,
        lease,
        now,
        repair,
    };
    let chunk_objects = svc.chunks().list().map_ok(|o| (o.hash, o.meta));
    let known_chunks = async |hashes: Vec<ChunkHash>| {
        let mut conn = svc.db.conn().await?;
        let found = chunks::find_by_hashes(conn.raw(), &hashes).await?;
        Ok(found.into_keys().collect())
    };
    let orphan_chunk = |_: ChunkHash, meta: &ObjectMeta| Doomed::orphan(meta.key.as_str());
    sweep
        .run(chunk_objects, known_chunks, orphan_chunk, report)
        .await?;
    let known_packs = async |ids: Vec<i64>| {
        let mut conn = svc.db.conn().await?;
        Ok(packs::existing(conn.raw(), &ids).await?)
    };
    let orphan_pack = |id: i64, meta: &ObjectMeta| Some(Doomed::pack(id, meta.size));
    sweep
        .run(svc.chunks().list_packs(), known_packs, orphan_pack, report)
        .await
}

/// One listing of storage compared with the database.
#[derive(Clone, Copy)]
struct Sweep<'a> {
    svc: &'a Services,
    lease: &'a GcLease,
    now: i64,
    repair: bool,
}

impl Sweep<'_> {
    /// Reports every listed object whose key names nothing (`None`) or
    /// something `known` does not find, in batches; with `repair`, deletes
    /// those older than the grace period through the deletion protocol.
    async fn run<K: Copy + Eq + std::hash::Hash>(
        self,
        listing: impl futures::Stream<Item = Result<(Option<K>, ObjectMeta), StorageError>>,
        known: impl AsyncFn(Vec<K>) -> anyhow::Result<HashSet<K>>,
        doomed: impl Fn(K, &ObjectMeta) -> Option<Doomed>,
        report: &mut VerifyReport,
    ) -> anyhow::Result<()> {
        let cutoff = self.now - grace_secs(self.svc);
        let grace = self.svc.config.garbage_collection.grace_period.get();
        let now_t = SystemTime::UNIX_EPOCH + Duration::from_secs(self.now.max(0) as u64);
        let mut listing = std::pin::pin!(listing);
        let mut batch: Vec<(K, ObjectMeta)> = Vec::new();
        loop {
            let next = listing.try_next().await?;
            match &next {
                Some((Some(k), meta)) => batch.push((*k, meta.clone())),
                Some((None, meta)) => report.orphan_objects.push(meta.key.as_str().to_owned()),
                None => {}
            }
            if batch.len() >= BATCH || (next.is_none() && !batch.is_empty()) {
                let found = known(batch.iter().map(|(k, _)| *k).collect()).await?;
                batch.retain(|(k, _)| !found.contains(k));
                let pending = self.intended(&batch).await?;
                let mut delete = Vec::new();
                for (k, meta) in batch.drain(..) {
                    if pending.contains(meta.key.as_str()) {
                        report.pending_writes.push(meta.key.as_str().to_owned());
                    } else {
                        report.orphan_objects.push(meta.key.as_str().to_owned());
                    }
                    let old = now_t
                        .duration_since(meta.last_modified)
                        .is_ok_and(|age| age > grace);
                    if self.repair && old {
                        delete.extend(doomed(k, &meta));
                    }
                }
                report.orphans_deleted +=
                    chunk_deletion::delete(self.svc, self.lease, delete, cutoff)
                        .await?
                        .objects;
                self.lease.renew(self.svc).await?;
            }
            if next.is_none() {
                return Ok(());
            }
        }
    }

    /// Which of the listed objects a writer's intent names: an ingest or a
    /// compaction still writing them, or one killed before its commit,
    /// whose objects GC deletes once the intent is older than the grace
    /// period (docs/gc.md). Not orphans: nothing is wrong.
    async fn intended<K>(self, batch: &[(K, ObjectMeta)]) -> anyhow::Result<HashSet<String>> {
        let keys: Vec<_> = batch.iter().map(|(_, meta)| meta.key.clone()).collect();
        let mut conn = self.svc.db.conn().await?;
        Ok(chunk_claims::intended(conn.raw(), &keys)
            .await?
            .into_iter()
            .collect())
    }
}

async fn check_one(svc: &Services, rec: &ChunkRecord) -> Option<String> {
    // The store checks the length: a frame shorter or longer than recorded
    // is an error naming both sizes.
    let data = match svc.chunks().read_frame(rec).await {
        Ok(d) => d,
        Err(e) => return Some(format!("unreadable: {e}")),
    };
    let raw = match chunk::decompress(&data, rec.chunk_size as usize) {
        Ok(r) => r,
        Err(e) => return Some(format!("does not decompress: {e}")),
    };
    let actual = ChunkHash::of(&raw);
    (actual != rec.hash).then(|| format!("content hashes to {actual}"))
}

fn grace_secs(svc: &Services) -> i64 {
    svc.config.garbage_collection.grace_period.as_secs() as i64
}

async fn check_chunks(
    svc: &Services,
    lease: &GcLease,
    report: &mut VerifyReport,
) -> anyhow::Result<Vec<ChunkId>> {
    let mut damaged = Vec::new();
    let mut after = ChunkId(0);
    loop {
        let page = {
            let mut conn = svc.db.conn().await?;
            verify::chunk_page(conn.raw(), after, 500).await?
        };
        let Some(last) = page.last() else { break };
        after = last.id;
        for rec in &page {
            report.chunks_checked += 1;
            if let Some(problem) = check_one(svc, rec).await {
                tracing::warn!(chunk = %rec.hash, problem, "damaged chunk");
                report.damaged_chunks.push((rec.hash.to_string(), problem));
                damaged.push(rec.id);
            }
        }
        lease.renew(svc).await?;
    }
    Ok(damaged)
}

async fn quarantine(
    svc: &Services,
    lease: &GcLease,
    now: i64,
    damaged: &[ChunkId],
    report: &mut VerifyReport,
) -> anyhow::Result<()> {
    let bad: HashSet<ChunkId> = damaged.iter().copied().collect();
    let mut broken = Vec::new();
    let mut after = NarId(0);
    loop {
        let page = {
            let mut conn = svc.db.conn().await?;
            verify::ready_nar_page(conn.raw(), after, 500).await?
        };
        let Some((last, _)) = page.last() else { break };
        after = *last;
        for (id, chunk_ids) in page {
            if !chunk_ids.iter().any(|c| bad.contains(c)) {
                continue;
            }
            let distinct: Vec<ChunkId> = chunk_ids
                .into_iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut tx = svc.db.begin().await?;
            if verify::mark_broken(tx.raw(), id, now).await? {
                for batch in distinct.chunks(BATCH) {
                    refcounts::release_refs(tx.raw(), batch, now).await?;
                }
                tx.commit().await?;
                broken.push(id);
            }
        }
    }
    let mut conn = svc.db.conn().await?;
    for batch in damaged.chunks(BATCH) {
        refcounts::quarantine_chunks(conn.raw(), batch).await?;
    }
    // Finish them now, as GC would: a re-upload of a broken NAR must not
    // wait for the next GC to store these chunks again.
    loop {
        let marked = chunk_gc::deleting_chunks(conn.raw(), BATCH as i64).await?;
        if marked.is_empty() {
            break;
        }
        chunk_deletion::delete_marked(svc, lease, &marked, now - grace_secs(svc)).await?;
    }
    for batch in broken.chunks(BATCH) {
        report
            .affected_paths
            .extend(verify::paths_of_nars(conn.raw(), batch).await?);
    }
    report.nars_marked_broken = broken.len() as u64;
    Ok(())
}
