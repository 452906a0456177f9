//! Queries of garbage collection, each bounded (at most [`super::chunks::BATCH`] binds or a
//! `LIMIT`), so a GC over millions of rows never holds a long lock.
//!
//! Objects expire, then NARs no object refers to (and untouched for the
//! grace period) are deleted, releasing their chunk references
//! ([`super::refcounts`], where the reference protocol is stated), then
//! unreferenced chunks go ([`super::chunk_gc`]).
//!
//! Expiry deletes an object only while it is idle and no other object of its
//! cache refers to it (`object_refs`), referrers first, so no served path
//! ever loses part of its closure in the cache.

use sqlx::{AssertSqlSafe, Row};

use super::nars::decode_chunk_list;
use super::{CacheId, ChunkId, DbError, NarId, ObjectId, Raw, key_column, placeholders};
use crate::on_conn;
use crate::storage::ObjectKey;

/// An object as GC's mark reads it.
#[derive(Debug, Clone)]
pub struct ObjectNode {
    /// Row id.
    pub id: ObjectId,
    /// Hash part of its store path.
    pub store_path_hash: String,
    /// Reference base names, space-separated (as stored).
    pub refs: String,
    /// Last push or recorded use.
    pub last_accessed_at: i64,
}

/// The objects of `cache_id` with id above `after` (keyset paging on
/// `objects_cache_id_idx`), at most `limit`, by id.
pub async fn objects_page(
    raw: Raw<'_>,
    cache_id: CacheId,
    after: ObjectId,
    limit: i64,
) -> Result<Vec<ObjectNode>, DbError> {
    on_conn!(raw, c => {
        let rows = sqlx::query(
            "SELECT id, store_path_hash, refs, last_accessed_at FROM objects
             WHERE cache_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(cache_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *c)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ObjectNode {
                    id: r.try_get("id")?,
                    store_path_hash: r.try_get("store_path_hash")?,
                    refs: r.try_get("refs")?,
                    last_accessed_at: r.try_get("last_accessed_at")?,
                })
            })
            .collect()
    })
}

/// Store paths of objects by id (≤ [`super::chunks::BATCH`]): what a dry run prints.
pub async fn store_paths(
    raw: Raw<'_>,
    ids: &[ObjectId],
) -> Result<Vec<(ObjectId, String)>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT id, store_path FROM objects WHERE id IN ({})",
        placeholders(1, ids.len())
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql));
        for id in ids {
            q = q.bind(*id);
        }
        let rows = q.fetch_all(&mut *c).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("store_path")?)))
            .collect()
    })
}

/// The re-check of [`delete_unneeded_objects`]: still idle since before `$2`, and no
/// other remaining object of the cache refers to it.
const UNNEEDED: &str = "cache_id = $1 AND last_accessed_at < $2
    AND NOT EXISTS (SELECT 1 FROM object_refs r
                    WHERE r.cache_id = objects.cache_id AND r.ref_hash = objects.store_path_hash
                      AND r.object_id <> objects.id)";

/// Deletes the objects of `cache_id` among `ids` (≤ [`super::chunks::BATCH`])
/// that are still unneeded: idle since before `cutoff` (a read or re-push
/// racing the GC wins) and referenced by no other remaining object of the
/// cache (an upload racing the GC, or a referrer the GC kept, wins). GC
/// deletes referrers before what they refer to, so what stays keeps its
/// closure. Returns the ids deleted.
pub async fn delete_unneeded_objects(
    raw: Raw<'_>,
    cache_id: CacheId,
    ids: &[ObjectId],
    cutoff: i64,
) -> Result<Vec<ObjectId>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "DELETE FROM objects WHERE {UNNEEDED} AND id IN ({}) RETURNING id",
        placeholders(3, ids.len())
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql)).bind(cache_id).bind(cutoff);
        for id in ids {
            q = q.bind(*id);
        }
        let rows = q.fetch_all(&mut *c).await?;
        rows.iter().map(|r| r.try_get::<ObjectId, _>("id").map_err(DbError::from)).collect()
    })
}

/// For a group of objects of `cache_id` that refer to each other in a cycle
/// (which Nix never produces, but uploaded metadata can): deletes those
/// among `ids` (≤ [`super::chunks::BATCH`]) still idle since before
/// `cutoff`, with no check on referrers. The caller runs this for the whole
/// group in one transaction, then [`referred_hashes`], and commits only if
/// every member went and nothing left refers to any of them.
pub async fn delete_idle_objects(
    raw: Raw<'_>,
    cache_id: CacheId,
    ids: &[ObjectId],
    cutoff: i64,
) -> Result<u64, DbError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "DELETE FROM objects WHERE cache_id = $1 AND last_accessed_at < $2 AND id IN ({})",
        placeholders(3, ids.len())
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql)).bind(cache_id).bind(cutoff);
        for id in ids {
            q = q.bind(*id);
        }
        Ok(q.execute(&mut *c).await?.rows_affected())
    })
}

/// Whether any remaining object of `cache_id` refers to one of `hashes`
/// (≤ [`super::chunks::BATCH`]).
pub async fn referred_hashes(
    raw: Raw<'_>,
    cache_id: CacheId,
    hashes: &[&str],
) -> Result<bool, DbError> {
    if hashes.is_empty() {
        return Ok(false);
    }
    let sql = format!(
        "SELECT 1 AS one FROM object_refs WHERE cache_id = $1 AND ref_hash IN ({}) LIMIT 1",
        placeholders(2, hashes.len())
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql)).bind(cache_id);
        for h in hashes {
            q = q.bind(*h);
        }
        Ok(q.fetch_optional(&mut *c).await?.is_some())
    })
}

/// A NAR no object refers to.
#[derive(Debug, Clone)]
pub struct OrphanNar {
    /// Row id.
    pub id: NarId,
    /// Staging copy to delete, if still staged.
    pub staging_key: Option<ObjectKey>,
    /// Chunks whose references it holds (ready NARs).
    pub chunk_ids: Vec<ChunkId>,
    /// Whether it was ready (holds chunk references).
    pub ready: bool,
}

/// Looks at the next `limit` NARs by id above `after` and returns those
/// untouched since before `cutoff` that no object refers to, with the last id
/// looked at (`None` when there are no more). The page is bounded before the
/// anti-join, so each call costs O(limit) whatever the table size or the
/// planner's statistics (a bulk delete leaves them stale).
pub async fn orphan_nars(
    raw: Raw<'_>,
    after: NarId,
    cutoff: i64,
    limit: i64,
) -> Result<(Vec<OrphanNar>, Option<NarId>), DbError> {
    on_conn!(raw, c => {
        let last: Option<NarId> = sqlx::query(
            "SELECT MAX(id) AS last FROM (SELECT id FROM nars WHERE id > $1 ORDER BY id LIMIT $2) page",
        )
        .bind(after)
        .bind(limit)
        .fetch_one(&mut *c)
        .await?
        .try_get("last")?;
        let Some(last) = last else {
            return Ok((Vec::new(), None));
        };
        let rows = sqlx::query(
            "SELECT n.id, n.state, n.staging_key, n.chunk_list FROM nars n
             WHERE n.id > $1 AND n.id <= $2 AND n.updated_at < $3
               AND NOT EXISTS (SELECT 1 FROM objects o WHERE o.nar_id = n.id)
             ORDER BY n.id",
        )
        .bind(after)
        .bind(last)
        .bind(cutoff)
        .fetch_all(&mut *c)
        .await?;
        let found = rows
            .iter()
            .map(|r| {
                let state: String = r.try_get("state")?;
                let list: Option<Vec<u8>> = r.try_get("chunk_list")?;
                Ok(OrphanNar {
                    id: r.try_get("id")?,
                    staging_key: key_column("nars.staging_key", r.try_get("staging_key")?)?,
                    chunk_ids: list.as_deref().map(decode_chunk_list).transpose()?.unwrap_or_default(),
                    ready: state == "ready",
                })
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        Ok((found, Some(last)))
    })
}

/// Deletes the NARs among `ids` (≤ [`super::chunks::BATCH`]) that are still
/// orphans untouched since `cutoff`, in one statement; returns their ids.
pub async fn delete_orphan_nars(
    raw: Raw<'_>,
    ids: &[NarId],
    cutoff: i64,
) -> Result<Vec<NarId>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "DELETE FROM nars WHERE updated_at < $1 AND id IN ({})
           AND NOT EXISTS (SELECT 1 FROM objects o WHERE o.nar_id = nars.id)
         RETURNING id",
        placeholders(2, ids.len())
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql)).bind(cutoff);
        for id in ids {
            q = q.bind(*id);
        }
        let rows = q.fetch_all(&mut *c).await?;
        rows.iter().map(|r| r.try_get::<NarId, _>("id").map_err(DbError::from)).collect()
    })
}

/// Deletes a NAR if it is still an orphan untouched since `cutoff`.
pub async fn delete_orphan_nar(raw: Raw<'_>, id: NarId, cutoff: i64) -> Result<bool, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query(
            "DELETE FROM nars WHERE id = $1 AND updated_at < $2
               AND NOT EXISTS (SELECT 1 FROM objects o WHERE o.nar_id = nars.id)",
        )
        .bind(id)
        .bind(cutoff)
        .execute(&mut *c)
        .await?;
        Ok(done.rows_affected() == 1)
    })
}
