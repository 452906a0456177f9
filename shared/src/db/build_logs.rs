//! `build_logs`: build logs uploaded to `PUT /{cache}/log/<drv>`, stored
//! zstd-compressed per cache and derivation (docs/protocol.md "Build logs
//! and realisations"). A log is kept while it is uploaded or read within
//! the cache's retention; [`expire`] is GC's side.

use sqlx::Row;

use super::{CacheId, DbError, Raw};
use crate::on_conn;

/// A stored log, still compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLog {
    /// The log as a zstd stream.
    pub log_zstd: Vec<u8>,
    /// Its uncompressed length.
    pub size: i64,
}

/// Stores (or replaces: a rebuild's log) the log of `drv_name`.
pub async fn put(
    raw: Raw<'_>,
    cache_id: CacheId,
    drv_name: &str,
    log_zstd: &[u8],
    size: i64,
    now: i64,
) -> Result<(), DbError> {
    on_conn!(raw, c => {
        sqlx::query(
            "INSERT INTO build_logs (cache_id, drv_name, log_zstd, size, stored_size, created_at, used_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6)
             ON CONFLICT (cache_id, drv_name) DO UPDATE SET
                 log_zstd = excluded.log_zstd, size = excluded.size,
                 stored_size = excluded.stored_size, created_at = excluded.created_at,
                 used_at = excluded.used_at",
        )
        .bind(cache_id)
        .bind(drv_name)
        .bind(log_zstd)
        .bind(size)
        .bind(log_zstd.len() as i64)
        .bind(now)
        .execute(&mut *c)
        .await?;
        Ok(())
    })
}

/// The log of `drv_name`, noting the read as a use when the last one is
/// older than `refresh_before` (bounding the writes a popular log costs).
pub async fn get(
    mut raw: Raw<'_>,
    cache_id: CacheId,
    drv_name: &str,
    now: i64,
    refresh_before: Option<i64>,
) -> Result<Option<StoredLog>, DbError> {
    if let Some(before) = refresh_before {
        on_conn!(raw.reborrow(), c => {
            sqlx::query(
                "UPDATE build_logs SET used_at = $3
                 WHERE cache_id = $1 AND drv_name = $2 AND used_at < $4",
            )
            .bind(cache_id)
            .bind(drv_name)
            .bind(now)
            .bind(before)
            .execute(&mut *c)
            .await?;
        });
    }
    on_conn!(raw, c => {
        let row = sqlx::query(
            "SELECT log_zstd, size FROM build_logs WHERE cache_id = $1 AND drv_name = $2",
        )
        .bind(cache_id)
        .bind(drv_name)
        .fetch_optional(&mut *c)
        .await?;
        row.map(|r| -> Result<StoredLog, DbError> {
            Ok(StoredLog {
                log_zstd: r.try_get("log_zstd")?,
                size: r.try_get("size")?,
            })
        })
        .transpose()
    })
}

/// Deletes the cache's logs last used before `cutoff`; how many went.
pub async fn expire(raw: Raw<'_>, cache_id: CacheId, cutoff: i64) -> Result<u64, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query("DELETE FROM build_logs WHERE cache_id = $1 AND used_at < $2")
            .bind(cache_id)
            .bind(cutoff)
            .execute(&mut *c)
            .await?;
        Ok(done.rows_affected())
    })
}

/// Logs of a cache and their stored (compressed) bytes, for its stats.
pub async fn totals(raw: Raw<'_>, cache_id: CacheId) -> Result<(i64, i64), DbError> {
    on_conn!(raw, c => {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(stored_size), 0) AS BIGINT) AS bytes
             FROM build_logs WHERE cache_id = $1",
        )
        .bind(cache_id)
        .fetch_one(&mut *c)
        .await?;
        Ok((r.try_get("n")?, r.try_get("bytes")?))
    })
}
