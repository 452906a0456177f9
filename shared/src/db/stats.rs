//! Storage statistics per cache and global (Attic issue #307), computed with
//! aggregate queries on demand.

use serde::Serialize;
use sqlx::Row;

use super::{CacheId, DbError, Raw};
use crate::on_conn;

/// Statistics of one cache: computed here, defined with the API's JSON
/// (`GET /_api/v1/caches/{cache}/stats`) because it is exactly that body.
pub use larder_core::wire::CacheStats;

/// Statistics of the whole store.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct GlobalStats {
    /// Caches.
    pub caches: i64,
    /// Store paths across all caches.
    pub objects: i64,
    /// Sum of NAR sizes over all paths (logical bytes).
    pub nar_bytes: i64,
    /// Distinct NARs.
    pub nars: i64,
    /// Sum of distinct NAR sizes.
    pub unique_nar_bytes: i64,
    /// Distinct chunks.
    pub chunks: i64,
    /// Uncompressed bytes of distinct chunks.
    pub chunk_bytes: i64,
    /// Bytes in storage (compressed chunks).
    pub stored_bytes: i64,
    /// Staged NARs waiting for ingest, and their bytes.
    pub staged_nars: i64,
    /// Bytes of staged NARs.
    pub staged_bytes: i64,
    /// `nar_bytes / stored_bytes`: what dedup and compression save together.
    pub dedup_ratio: f64,
    /// Pack objects.
    pub packs: i64,
    /// Their bytes in storage (live frames, dead frames and indexes).
    pub pack_bytes: i64,
    /// Bytes in packs no chunk row uses any more: space GC has released
    /// but storage still holds until the pack empties or is compacted.
    pub pack_dead_bytes: i64,
    /// Chunks stored one per object (the layout before packs).
    pub unpacked_chunks: i64,
}

fn ratio(a: i64, b: i64) -> f64 {
    if b <= 0 { 1.0 } else { a as f64 / b as f64 }
}

/// Statistics of one cache.
pub async fn cache(raw: Raw<'_>, cache_id: CacheId) -> Result<CacheStats, DbError> {
    on_conn!(raw, c => {
        let a = sqlx::query(
            "SELECT COUNT(*) AS objects, CAST(COALESCE(SUM(n.nar_size), 0) AS BIGINT) AS nar_bytes
             FROM objects o JOIN nars n ON n.id = o.nar_id WHERE o.cache_id = $1",
        )
        .bind(cache_id)
        .fetch_one(&mut *c)
        .await?;
        let b = sqlx::query(
            "SELECT COUNT(*) AS nars, CAST(COALESCE(SUM(CASE WHEN state = 'ready' THEN file_size WHEN state = 'staged' THEN nar_size ELSE 0 END), 0) AS BIGINT) AS stored
             FROM nars WHERE id IN (SELECT nar_id FROM objects WHERE cache_id = $1)",
        )
        .bind(cache_id)
        .fetch_one(&mut *c)
        .await?;
        let l = sqlx::query(
            "SELECT COUNT(*) AS logs, CAST(COALESCE(SUM(stored_size), 0) AS BIGINT) AS bytes,
                    (SELECT COUNT(*) FROM realisations WHERE cache_id = $1) AS realisations
             FROM build_logs WHERE cache_id = $1",
        )
        .bind(cache_id)
        .fetch_one(&mut *c)
        .await?;
        let nar_bytes: i64 = a.try_get("nar_bytes")?;
        let stored: i64 = b.try_get("stored")?;
        Ok(CacheStats {
            build_logs: l.try_get("logs")?,
            build_log_bytes: l.try_get("bytes")?,
            realisations: l.try_get("realisations")?,
            objects: a.try_get("objects")?,
            nar_bytes,
            nars: b.try_get("nars")?,
            stored_bytes: stored,
            dedup_ratio: ratio(nar_bytes, stored),
        })
    })
}

/// Statistics of the whole store.
pub async fn global(raw: Raw<'_>) -> Result<GlobalStats, DbError> {
    on_conn!(raw, c => {
        let caches: i64 = sqlx::query("SELECT COUNT(*) AS n FROM caches").fetch_one(&mut *c).await?.try_get("n")?;
        let o = sqlx::query(
            "SELECT COUNT(*) AS objects, CAST(COALESCE(SUM(n.nar_size), 0) AS BIGINT) AS nar_bytes
             FROM objects o JOIN nars n ON n.id = o.nar_id",
        )
        .fetch_one(&mut *c)
        .await?;
        let n = sqlx::query(
            "SELECT COUNT(*) AS nars, CAST(COALESCE(SUM(nar_size), 0) AS BIGINT) AS bytes,
                    CAST(COALESCE(SUM(CASE WHEN state = 'staged' THEN 1 ELSE 0 END), 0) AS BIGINT) AS staged,
                    CAST(COALESCE(SUM(CASE WHEN state = 'staged' THEN nar_size ELSE 0 END), 0) AS BIGINT) AS staged_bytes
             FROM nars",
        )
        .fetch_one(&mut *c)
        .await?;
        let k = sqlx::query(
            "SELECT COUNT(*) AS chunks, CAST(COALESCE(SUM(chunk_size), 0) AS BIGINT) AS raw,
                    CAST(COALESCE(SUM(file_size), 0) AS BIGINT) AS stored
             FROM chunks WHERE refcount >= 0",
        )
        .fetch_one(&mut *c)
        .await?;
        let p = sqlx::query(
            "SELECT COUNT(*) AS packs, CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes,
                    CAST(COALESCE(SUM(live_bytes), 0) AS BIGINT) AS live
             FROM packs",
        )
        .fetch_one(&mut *c)
        .await?;
        let unpacked: i64 = sqlx::query("SELECT COUNT(*) AS n FROM chunks WHERE pack_id IS NULL")
            .fetch_one(&mut *c)
            .await?
            .try_get("n")?;
        let pack_bytes: i64 = p.try_get("bytes")?;
        let pack_live: i64 = p.try_get("live")?;
        let nar_bytes: i64 = o.try_get("nar_bytes")?;
        let staged_bytes: i64 = n.try_get("staged_bytes")?;
        let stored: i64 = k.try_get("stored")?;
        Ok(GlobalStats {
            caches,
            objects: o.try_get("objects")?,
            nar_bytes,
            nars: n.try_get("nars")?,
            unique_nar_bytes: n.try_get("bytes")?,
            chunks: k.try_get("chunks")?,
            chunk_bytes: k.try_get("raw")?,
            stored_bytes: stored,
            staged_nars: n.try_get("staged")?,
            staged_bytes,
            dedup_ratio: ratio(nar_bytes, stored + staged_bytes),
            packs: p.try_get("packs")?,
            pack_bytes,
            pack_dead_bytes: (pack_bytes - pack_live).max(0),
            unpacked_chunks: unpacked,
        })
    })
}
