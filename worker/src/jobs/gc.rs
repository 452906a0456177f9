//! Garbage collection: expire paths no live path needs, delete orphan NARs, delete
//! unreferenced chunks — in bounded batches, once cluster-wide (a lease),
//! safely while uploads, ingests and downloads go on. The protocol is in
//! `docs/gc.md` and in `larder_shared::db::gc`.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::Context;
use serde::Serialize;
use tracing::instrument;

use larder_shared::audit::{Actor, AuditEvent, GcSummary};
use larder_shared::db::chunks::BATCH;
use larder_shared::db::refcounts;
use larder_shared::db::{
    CacheId, ChunkId, DbError, NarId, ObjectId, audit, caches, gc, replaced_frames, staging_intents,
};
use larder_shared::retention::Retention;

use crate::chunk_deletion::{self};
use crate::closure::{Graph, Plan};
use crate::compaction;
use crate::gc_lease::GcLease;
pub use crate::gc_lease::{LEASE, LEASE_TTL};
use crate::pack_mover::Moved;
use crate::services::Services;

mod documents;

/// Rows read per page.
const PAGE: i64 = 1000;
/// Orphan NARs deleted per transaction.
const NAR_TX: usize = 100;

/// What one GC run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Paths removed from caches because they expired.
    pub objects_expired: u64,
    /// NARs deleted because no path referred to them.
    pub nars_deleted: u64,
    /// Chunks deleted from storage and database.
    pub chunks_deleted: u64,
    /// Stored bytes freed.
    pub bytes_freed: u64,
    /// Objects of writers that died before their commit (found through
    /// their intents, older than the grace period) or of deletions a dead
    /// GC left claimed, deleted.
    pub orphan_objects_deleted: u64,
    /// Packs deleted because every chunk in them died (their bytes are in
    /// `bytes_freed`; a packed chunk's own bytes are freed only with its pack).
    pub packs_deleted: u64,
    /// What compaction rewrote (docs/gc.md "Compaction").
    pub compaction: Moved,
    /// Build logs not uploaded or read within their cache's retention.
    pub build_logs_expired: u64,
    /// Realisations not uploaded or read within their cache's retention.
    pub realisations_expired: u64,
}

/// Runs one GC at time `now` (Unix seconds; injectable for tests) if no
/// other GC holds the lease. `None` means another GC is running.
pub async fn run(svc: &Services, now: i64, holder: &str) -> anyhow::Result<Option<GcReport>> {
    run_unless_recent(svc, now, holder, None).await
}

/// The scheduler's GC: [`run`], but only if no GC finished in the last
/// `interval` seconds, checked as the lease is taken. Several workers that
/// found GC due at the same moment then run one pass between them.
pub async fn run_scheduled(
    svc: &Services,
    now: i64,
    holder: &str,
    interval: i64,
) -> anyhow::Result<Option<GcReport>> {
    run_unless_recent(svc, now, holder, Some(now - interval + 1)).await
}

#[instrument(skip_all, fields(holder))]
async fn run_unless_recent(
    svc: &Services,
    now: i64,
    holder: &str,
    finished_before: Option<i64>,
) -> anyhow::Result<Option<GcReport>> {
    let Some(lease) = GcLease::acquire_if_due(svc, now, holder, finished_before).await? else {
        return Ok(None);
    };
    let mut expired_by_cache = BTreeMap::new();
    let mut attempt = 1;
    let collected = loop {
        match collect(svc, &lease, now, &mut expired_by_cache).await {
            // Every phase is bounded batches that re-check what they
            // delete, so a pass the database aborted in a race with an
            // ingest (a deadlock) is simply run again under the same lease.
            Err(e) if attempt < CONFLICT_ATTEMPTS && is_transient_conflict(&e) => {
                tracing::warn!(attempt, error = %format!("{e:#}"), "GC lost a race in the database; running the pass again");
                attempt += 1;
                lease.renew(svc).await?;
            }
            other => break other,
        }
    };
    let result = match collected {
        Ok(report) => audit_pass(svc, now, holder, &report, expired_by_cache)
            .await
            .map(|()| report),
        Err(e) => Err(e),
    };
    lease.release(svc, result.is_ok()).await?;
    result.map(Some)
}

/// Passes run under one lease when the database aborts one for a conflict.
const CONFLICT_ATTEMPTS: u32 = 3;

fn is_transient_conflict(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<DbError>())
        .any(DbError::is_transient_conflict)
}

/// The pass's one audit row. GC deletes in many transactions, so the row
/// comes after them: a crash mid-pass leaves deletions without a summary
/// (the next pass's row covers what it finishes).
async fn audit_pass(
    svc: &Services,
    now: i64,
    holder: &str,
    r: &GcReport,
    expired_by_cache: BTreeMap<String, u64>,
) -> anyhow::Result<()> {
    let event = AuditEvent::Gc(GcSummary {
        expired_by_cache,
        objects_expired: r.objects_expired,
        nars_deleted: r.nars_deleted,
        chunks_deleted: r.chunks_deleted,
        bytes_freed: r.bytes_freed,
        orphan_objects_deleted: r.orphan_objects_deleted,
    });
    let mut conn = svc.db.conn().await?;
    audit::insert(conn.raw(), now, &Actor::process(holder), &event)
        .await
        .context("recording the GC pass in the audit log")
}

async fn collect(
    svc: &Services,
    lease: &GcLease,
    now: i64,
    expired_by_cache: &mut BTreeMap<String, u64>,
) -> anyhow::Result<GcReport> {
    let mut report = GcReport::default();
    let grace = svc.config.garbage_collection.grace_period.as_secs() as i64;
    report.objects_expired = expire_objects(svc, lease, now, expired_by_cache).await?;
    documents::expire(svc, now, &mut report).await?;
    lease.renew(svc).await?;
    report.nars_deleted = delete_orphan_nars(svc, now, now - grace).await?;
    lease.renew(svc).await?;
    let chunks = chunk_deletion::delete_unreferenced(svc, lease, now - grace).await?;
    report.chunks_deleted = chunks.rows;
    report.bytes_freed = chunks.bytes;
    lease.renew(svc).await?;
    let packs = chunk_deletion::delete_empty_packs(svc, lease, now - grace).await?;
    report.packs_deleted = packs.objects;
    report.bytes_freed += packs.bytes;
    {
        // Their packs could go from here on (the packs query waits for them).
        let mut conn = svc.db.conn().await?;
        replaced_frames::forget_before(conn.raw(), now - grace).await?;
    }
    lease.renew(svc).await?;
    report.orphan_objects_deleted +=
        chunk_deletion::delete_retired_objects(svc, lease, now - grace)
            .await?
            .objects;
    lease.renew(svc).await?;
    report.compaction = compaction::compact(svc, lease, now).await?;
    lease.renew(svc).await?;
    report.orphan_objects_deleted += chunk_deletion::delete_orphan_objects(svc, lease, now - grace)
        .await?
        .objects;
    tracing::info!(?report, "garbage collection finished");
    Ok(report)
}

/// Removes, per cache, the paths no live path needs (docs/gc.md "Closures"):
/// mark from the pinned and the recently used paths, then delete the rest
/// referrers first, each `DELETE` re-checking idleness and referrers;
/// counts them per cache name into `by_cache`.
async fn expire_objects(
    svc: &Services,
    lease: &GcLease,
    now: i64,
    by_cache: &mut BTreeMap<String, u64>,
) -> anyhow::Result<u64> {
    let all = {
        let mut conn = svc.db.conn().await?;
        caches::list(conn.raw()).await?
    };
    let mut expired = 0;
    for cache in all {
        let retention = Retention::of(&cache, &svc.config.garbage_collection);
        let Some(cutoff) = retention.cutoff(now) else {
            continue; // 0 keeps forever
        };
        let graph = Graph::load(&svc.db, cache.id).await?;
        let plan = graph.mark(cutoff);
        let n = delete_doomed(svc, lease, cache.id, cutoff, &graph, &plan).await?;
        expired += n;
        if n > 0 {
            *by_cache.entry(cache.name.to_string()).or_default() += n;
        }
        lease.renew(svc).await?;
    }
    Ok(expired)
}

/// Deletes a cache's doomed objects layer by layer. An object a `DELETE`
/// keeps (used or referred to since the mark) holds back its doomed
/// referents, which would be kept anyway.
async fn delete_doomed(
    svc: &Services,
    lease: &GcLease,
    cache_id: CacheId,
    cutoff: i64,
    graph: &Graph,
    plan: &Plan,
) -> anyhow::Result<u64> {
    let mut held_back = vec![false; graph.len()];
    let mut deleted = 0u64;
    let mut batches = 0u64;
    for layer in &plan.layers {
        let mut todo = Vec::with_capacity(layer.len());
        for &s in layer {
            if held_back[s] {
                for t in graph.referent_slots(s) {
                    held_back[t] = true;
                }
            } else {
                todo.push(s);
            }
        }
        for batch in todo.chunks(BATCH) {
            let ids: Vec<ObjectId> = batch.iter().map(|&s| graph.id(s)).collect();
            let gone: HashSet<ObjectId> = {
                let mut conn = svc.db.conn().await?;
                gc::delete_unneeded_objects(conn.raw(), cache_id, &ids, cutoff)
                    .await?
                    .into_iter()
                    .collect()
            };
            deleted += gone.len() as u64;
            for &s in batch.iter().filter(|&&s| !gone.contains(&graph.id(s))) {
                for t in graph.referent_slots(s) {
                    held_back[t] = true;
                }
            }
            batches += 1;
            if batches.is_multiple_of(100) {
                lease.renew(svc).await?;
            }
        }
    }
    // A cyclic group below a kept object stays: its check finds the referrer.
    if !plan.cyclic.is_empty() {
        deleted += delete_cyclic(svc, cache_id, cutoff, graph, &plan.cyclic).await?;
    }
    Ok(deleted)
}

/// Most objects deleted together as one reference cycle group.
const MAX_CYCLIC: usize = 10_000;

/// Deletes doomed objects caught in reference cycles all together, in one
/// transaction that commits only if every one of them was still idle and no
/// remaining object refers to any of them.
async fn delete_cyclic(
    svc: &Services,
    cache_id: CacheId,
    cutoff: i64,
    graph: &Graph,
    slots: &[usize],
) -> anyhow::Result<u64> {
    if slots.len() > MAX_CYCLIC {
        tracing::warn!(
            cache_id = cache_id.get(),
            paths = slots.len(),
            "idle paths in reference cycles kept: too many to delete together"
        );
        return Ok(0);
    }
    let ids: Vec<ObjectId> = slots.iter().map(|&s| graph.id(s)).collect();
    let mut hashes = Vec::with_capacity(ids.len());
    {
        let mut conn = svc.db.conn().await?;
        for batch in ids.chunks(BATCH) {
            for (_, path) in gc::store_paths(conn.raw(), batch).await? {
                let base = path.rsplit('/').next().unwrap_or_default();
                hashes.extend(base.get(..32).map(str::to_owned));
            }
        }
    }
    let mut tx = svc.db.begin().await?;
    let mut gone = 0u64;
    for batch in ids.chunks(BATCH) {
        gone += gc::delete_idle_objects(tx.raw(), cache_id, batch, cutoff).await?;
    }
    if gone != ids.len() as u64 {
        return Ok(0); // dropped: rolled back
    }
    let refs: Vec<&str> = hashes.iter().map(String::as_str).collect();
    for batch in refs.chunks(BATCH) {
        if gc::referred_hashes(tx.raw(), cache_id, batch).await? {
            return Ok(0);
        }
    }
    tx.commit().await?;
    Ok(gone)
}

/// Deletes NARs no object refers to that nobody touched since `cutoff`,
/// releasing their chunk references and staged copies.
async fn delete_orphan_nars(svc: &Services, now: i64, cutoff: i64) -> anyhow::Result<u64> {
    let mut deleted = 0;
    let mut after = NarId(0);
    loop {
        let (page, last) = {
            let mut conn = svc.db.conn().await?;
            gc::orphan_nars(conn.raw(), after, cutoff, PAGE).await?
        };
        let Some(last) = last else { break };
        after = last;
        // Up to NAR_TX NARs per transaction, their chunk releases merged:
        // a GC of millions of NARs is thousands of transactions, not millions.
        for group in page.chunks(NAR_TX) {
            let mut tx = svc.db.begin().await?;
            let mut released: BTreeMap<ChunkId, i64> = BTreeMap::new();
            let mut staged = Vec::new();
            let ids: Vec<NarId> = group.iter().map(|n| n.id).collect();
            let gone: HashSet<NarId> = gc::delete_orphan_nars(tx.raw(), &ids, cutoff)
                .await?
                .into_iter()
                .collect();
            // Those not deleted were linked again, or touched: kept.
            for nar in group.iter().filter(|n| gone.contains(&n.id)) {
                deleted += 1;
                if nar.ready {
                    let distinct: BTreeSet<ChunkId> = nar.chunk_ids.iter().copied().collect();
                    for id in distinct {
                        *released.entry(id).or_default() += 1;
                    }
                }
                staged.extend(nar.staging_key.clone());
            }
            // Lock every chunk released, ids ascending, before the grouped
            // updates (which visit them count by count): the same order as
            // an ingest's, so the two never deadlock.
            let all: Vec<ChunkId> = released.keys().copied().collect();
            for batch in all.chunks(BATCH) {
                refcounts::lock_in_order(tx.raw(), batch).await?;
            }
            // Grouped by how many references go.
            let mut by_count: BTreeMap<i64, Vec<ChunkId>> = BTreeMap::new();
            for (id, n) in released {
                by_count.entry(n).or_default().push(id);
            }
            for (n, ids) in by_count {
                for batch in ids.chunks(BATCH) {
                    refcounts::release_refs_by(tx.raw(), batch, n, now).await?;
                }
            }
            // Their staged copies pass to staging intents, so a crash
            // before they are deleted leaves them to the sweeper.
            for key in &staged {
                staging_intents::release(tx.raw(), key, now).await?;
            }
            tx.commit().await?;
            for key in staged {
                svc.staging.delete(&key).await?;
                let mut conn = svc.db.conn().await?;
                staging_intents::remove(conn.raw(), &key).await?;
            }
        }
    }
    Ok(deleted)
}
