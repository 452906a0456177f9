//! `realisations`: the JSON documents Nix uploads for content-addressed
//! derivation outputs, `realisations/<id>.doi` (Nix ≤ 2.34) and
//! `build-trace-v2/<drv>/<output>.doi` (Nix 2.35), kept opaque per cache
//! under the path they were uploaded to (docs/protocol.md "Build logs and
//! realisations"). One naming an output (`outPath`) is kept while the cache
//! keeps that path; one naming none, as a build log: by its last upload or
//! read.

use sqlx::Row;

use super::{CacheId, DbError, Raw};
use crate::on_conn;

/// Stores (or replaces) the document at `doc_path`, kept with the output
/// whose store path hash is `out_path_hash`, if any.
pub async fn put(
    raw: Raw<'_>,
    cache_id: CacheId,
    doc_path: &str,
    document: &[u8],
    out_path_hash: Option<&str>,
    now: i64,
) -> Result<(), DbError> {
    on_conn!(raw, c => {
        sqlx::query(
            "INSERT INTO realisations
                 (cache_id, doc_path, document, out_path_hash, created_at, used_at)
             VALUES ($1, $2, $3, $4, $5, $5)
             ON CONFLICT (cache_id, doc_path) DO UPDATE SET
                 document = excluded.document, out_path_hash = excluded.out_path_hash,
                 created_at = excluded.created_at, used_at = excluded.used_at",
        )
        .bind(cache_id)
        .bind(doc_path)
        .bind(document)
        .bind(out_path_hash)
        .bind(now)
        .execute(&mut *c)
        .await?;
        Ok(())
    })
}

/// The document at `doc_path`, noting the read as a use when the last one
/// is older than `refresh_before`.
pub async fn get(
    mut raw: Raw<'_>,
    cache_id: CacheId,
    doc_path: &str,
    now: i64,
    refresh_before: Option<i64>,
) -> Result<Option<Vec<u8>>, DbError> {
    if let Some(before) = refresh_before {
        on_conn!(raw.reborrow(), c => {
            sqlx::query(
                "UPDATE realisations SET used_at = $3
                 WHERE cache_id = $1 AND doc_path = $2 AND used_at < $4",
            )
            .bind(cache_id)
            .bind(doc_path)
            .bind(now)
            .bind(before)
            .execute(&mut *c)
            .await?;
        });
    }
    on_conn!(raw, c => {
        let row = sqlx::query(
            "SELECT document FROM realisations WHERE cache_id = $1 AND doc_path = $2",
        )
        .bind(cache_id)
        .bind(doc_path)
        .fetch_optional(&mut *c)
        .await?;
        row.map(|r| r.try_get::<Vec<u8>, _>("document"))
            .transpose()
            .map_err(DbError::from)
    })
}

/// Deletes the cache's documents that name no output and were last used
/// before `cutoff`; how many went.
pub async fn expire(raw: Raw<'_>, cache_id: CacheId, cutoff: i64) -> Result<u64, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query(
            "DELETE FROM realisations
             WHERE cache_id = $1 AND out_path_hash IS NULL AND used_at < $2",
        )
        .bind(cache_id)
        .bind(cutoff)
        .execute(&mut *c)
        .await?;
        Ok(done.rows_affected())
    })
}

/// Deletes the documents, uploaded before `before`, whose output the
/// cache no longer holds (expired, deleted, or never pushed); how many
/// went. `before` (the grace period) spares a document uploaded a moment
/// before its output's narinfo.
pub async fn delete_orphaned(raw: Raw<'_>, before: i64) -> Result<u64, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query(
            "DELETE FROM realisations
             WHERE out_path_hash IS NOT NULL AND created_at < $1
               AND NOT EXISTS (
                   SELECT 1 FROM objects o
                   WHERE o.cache_id = realisations.cache_id
                     AND o.store_path_hash = realisations.out_path_hash)",
        )
        .bind(before)
        .execute(&mut *c)
        .await?;
        Ok(done.rows_affected())
    })
}

/// Documents of a cache, for its stats.
pub async fn count(raw: Raw<'_>, cache_id: CacheId) -> Result<i64, DbError> {
    on_conn!(raw, c => {
        let r = sqlx::query("SELECT COUNT(*) AS n FROM realisations WHERE cache_id = $1")
            .bind(cache_id)
            .fetch_one(&mut *c)
            .await?;
        Ok(r.try_get("n")?)
    })
}
