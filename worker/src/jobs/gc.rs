//! Garbage collection: expire idle paths, delete orphan NARs, delete
//! unreferenced chunks — in bounded batches, once cluster-wide (a lease),
//! safely while uploads, ingests and downloads go on. The protocol is in
//! `docs/gc.md` and in `larder_shared::db::gc`.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::Context;
use serde::Serialize;
use tracing::instrument;

use larder_shared::chunk::ChunkHash;
use larder_shared::db::chunks::{BATCH, ChunkRecord};
use larder_shared::db::{caches, gc, leases, pins};
use larder_shared::storage::ObjectKey;

use crate::services::Services;

/// Name of the GC lease (persisted; never change it).
pub const LEASE: &str = "gc";
/// Lease lifetime; renewed after every batch.
pub const LEASE_TTL: i64 = 600;
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
    /// Chunk objects no row names (an ingest killed before its commit),
    /// deleted once older than the grace period.
    pub orphan_objects_deleted: u64,
}

/// Runs one GC at time `now` (Unix seconds; injectable for tests) if no
/// other GC holds the lease. `None` means another GC is running.
#[instrument(skip_all, fields(holder))]
pub async fn run(svc: &Services, now: i64, holder: &str) -> anyhow::Result<Option<GcReport>> {
    {
        let mut conn = svc.db.conn().await?;
        if !leases::try_acquire(conn.raw(), LEASE, holder, now, LEASE_TTL).await? {
            return Ok(None);
        }
    }
    let result = collect(svc, now, holder).await;
    let mut conn = svc.db.conn().await?;
    match &result {
        Ok(_) => leases::finish(conn.raw(), LEASE, holder, now).await?,
        Err(_) => leases::release(conn.raw(), LEASE, holder).await?,
    }
    result.map(Some)
}

async fn renew(svc: &Services, now: i64, holder: &str) -> anyhow::Result<()> {
    let mut conn = svc.db.conn().await?;
    if !leases::renew(conn.raw(), LEASE, holder, now, LEASE_TTL).await? {
        anyhow::bail!("lost the GC lease; another GC took over");
    }
    Ok(())
}

async fn collect(svc: &Services, now: i64, holder: &str) -> anyhow::Result<GcReport> {
    let mut report = GcReport::default();
    let grace = svc.config.garbage_collection.grace_period.as_secs() as i64;
    report.objects_expired = expire_objects(svc, now).await?;
    renew(svc, now, holder).await?;
    report.nars_deleted = delete_orphan_nars(svc, now, now - grace).await?;
    renew(svc, now, holder).await?;
    let (chunks, bytes) = delete_chunks(svc, now - grace, || renew(svc, now, holder)).await?;
    report.chunks_deleted = chunks;
    report.bytes_freed = bytes;
    renew(svc, now, holder).await?;
    let mut orphans = crate::jobs::verify::VerifyReport::default();
    crate::jobs::verify::find_orphans(svc, now, true, &mut orphans).await?;
    report.orphan_objects_deleted = orphans.orphans_deleted;
    tracing::info!(?report, "garbage collection finished");
    Ok(report)
}

/// Removes paths idle longer than their cache's retention, except pinned
/// closures.
async fn expire_objects(svc: &Services, now: i64) -> anyhow::Result<u64> {
    let default = svc
        .config
        .garbage_collection
        .default_retention_period
        .as_secs() as i64;
    let all = {
        let mut conn = svc.db.conn().await?;
        caches::list(conn.raw()).await?
    };
    let mut expired = 0;
    for cache in all {
        let retention = cache.retention_period.unwrap_or(default);
        if retention <= 0 {
            continue; // 0 keeps forever
        }
        let cutoff = now - retention;
        let protected = pinned_closure(svc, cache.id).await?;
        let mut after = 0;
        loop {
            let page = {
                let mut conn = svc.db.conn().await?;
                gc::idle_objects(conn.raw(), cache.id, cutoff, after, PAGE).await?
            };
            let Some(last) = page.last() else { break };
            after = last.id;
            let ids: Vec<i64> = page
                .iter()
                .map(|o| o.id)
                .filter(|id| !protected.contains(id))
                .collect();
            for batch in ids.chunks(BATCH) {
                let mut conn = svc.db.conn().await?;
                expired += gc::delete_idle_objects(conn.raw(), batch, cutoff).await?;
            }
        }
    }
    Ok(expired)
}

/// Object ids of every pinned path of a cache and its closure in that cache.
pub async fn pinned_closure(svc: &Services, cache_id: i64) -> anyhow::Result<HashSet<i64>> {
    let mut conn = svc.db.conn().await?;
    let mut frontier: Vec<String> = pins::list(conn.raw(), cache_id)
        .await?
        .into_iter()
        .map(|p| p.store_path_hash)
        .collect();
    let mut seen_hashes: HashSet<String> = frontier.iter().cloned().collect();
    let mut ids = HashSet::new();
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for batch in frontier.chunks(BATCH) {
            for obj in gc::objects_by_hashes(conn.raw(), cache_id, batch).await? {
                ids.insert(obj.id);
                for r in &obj.references {
                    let hash = r.get(..32).unwrap_or(r).to_owned();
                    if seen_hashes.insert(hash.clone()) {
                        next.push(hash);
                    }
                }
            }
        }
        frontier = next;
    }
    Ok(ids)
}

/// Deletes NARs no object refers to that nobody touched since `cutoff`,
/// releasing their chunk references and staged copies.
async fn delete_orphan_nars(svc: &Services, now: i64, cutoff: i64) -> anyhow::Result<u64> {
    let mut deleted = 0;
    let mut after = 0;
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
            let mut released: BTreeMap<i64, i64> = BTreeMap::new();
            let mut staged = Vec::new();
            let ids: Vec<i64> = group.iter().map(|n| n.id).collect();
            let gone: HashSet<i64> = gc::delete_orphan_nars(tx.raw(), &ids, cutoff)
                .await?
                .into_iter()
                .collect();
            // Those not deleted were linked again, or touched: kept.
            for nar in group.iter().filter(|n| gone.contains(&n.id)) {
                deleted += 1;
                if nar.ready {
                    let distinct: BTreeSet<i64> = nar.chunk_ids.iter().copied().collect();
                    for id in distinct {
                        *released.entry(id).or_default() += 1;
                    }
                }
                staged.extend(nar.staging_key.clone());
            }
            // Grouped by how many references go, ids ascending (lock order).
            let mut by_count: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
            for (id, n) in released {
                by_count.entry(n).or_default().push(id);
            }
            for (n, ids) in by_count {
                for batch in ids.chunks(BATCH) {
                    gc::release_refs_by(tx.raw(), batch, n, now).await?;
                }
            }
            tx.commit().await?;
            for key in staged {
                let key = ObjectKey::new(key).context("staging key in the database")?;
                svc.staging.delete(&key).await?;
            }
        }
    }
    Ok(deleted)
}

fn chunk_key(rec: &ChunkRecord) -> Option<ObjectKey> {
    // Chunks in packs are freed with their pack (not written yet).
    rec.pack_id.is_none().then(|| rec.hash.object_key())
}

/// Finishes chunks a crashed GC marked, then deletes chunks unreferenced
/// since `cutoff`: mark (`refcount = -1`), delete objects, delete rows.
async fn delete_chunks<F, Fut>(svc: &Services, cutoff: i64, renew: F) -> anyhow::Result<(u64, u64)>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let (mut count, mut bytes) = (0u64, 0u64);
    loop {
        let marked = {
            let mut conn = svc.db.conn().await?;
            gc::deleting_chunks(conn.raw(), BATCH as i64).await?
        };
        if marked.is_empty() {
            break;
        }
        let (c, b) = delete_marked(svc, &marked).await?;
        count += c;
        bytes += b;
        renew().await?;
    }
    loop {
        let candidates = {
            let mut conn = svc.db.conn().await?;
            gc::unreferenced_chunks(conn.raw(), cutoff, BATCH as i64).await?
        };
        if candidates.is_empty() {
            break;
        }
        let ids: Vec<i64> = candidates.iter().map(|c| c.id).collect();
        let marked: HashSet<i64> = {
            let mut tx = svc.db.begin().await?;
            let m = gc::mark_deleting(tx.raw(), &ids, cutoff).await?;
            tx.commit().await?;
            m.into_iter().collect()
        };
        let marked: Vec<ChunkRecord> = candidates
            .into_iter()
            .filter(|c| marked.contains(&c.id))
            .collect();
        let (c, b) = delete_marked(svc, &marked).await?;
        count += c;
        bytes += b;
        renew().await?;
    }
    Ok((count, bytes))
}

/// Deletes the objects, then the rows, of chunks marked `refcount = -1`.
pub(crate) async fn delete_marked(
    svc: &Services,
    marked: &[ChunkRecord],
) -> anyhow::Result<(u64, u64)> {
    for rec in marked {
        if let Some(key) = chunk_key(rec) {
            svc.storage.delete(&key).await?;
        }
    }
    let ids: Vec<i64> = marked.iter().map(|c| c.id).collect();
    let mut conn = svc.db.conn().await?;
    let n = gc::delete_marked_chunks(conn.raw(), &ids).await?;
    let bytes = marked.iter().map(|c| c.file_size.max(0) as u64).sum();
    Ok((n, bytes))
}

/// Hashes of chunk objects (for `verify`): parses `chunks/ab/cd/<hex>.zst`.
pub fn hash_of_chunk_key(key: &str) -> Option<ChunkHash> {
    let name = key.rsplit('/').next()?.strip_suffix(".zst")?;
    name.parse().ok()
}
