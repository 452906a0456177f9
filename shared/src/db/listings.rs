//! NAR listings (`.ls`).
//!
//! - `nix_listings`: `.ls` documents as uploaded, per cache and path, served
//!   only while bound to the path's current NAR hash.
//! - `nar_listings`: listings Larder generated from a NAR (shared between
//!   caches, as they depend on the NAR only).

use sqlx::Row;

use super::{CacheId, DbError, NarId, Raw};
use crate::on_conn;
use larder_core::nix::hash::NarHash;
use larder_core::nix::store_path::StorePathHash;

/// Stores the `.ls` an uploader PUT for a path of a cache, replacing an
/// earlier one; bound to `nar_hash` if given (the path is already there),
/// else pending until its narinfo arrives ([`bind_uploaded_listing`]).
pub async fn put_uploaded_listing(
    raw: Raw<'_>,
    cache_id: CacheId,
    hash: &StorePathHash,
    nar_hash: Option<&NarHash>,
    listing: &[u8],
    now: i64,
) -> Result<(), DbError> {
    on_conn!(raw, c => {
        sqlx::query(
            "INSERT INTO nix_listings (cache_id, store_path_hash, nar_hash, listing, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (cache_id, store_path_hash) DO UPDATE SET
                 nar_hash = excluded.nar_hash, listing = excluded.listing,
                 created_at = excluded.created_at",
        )
        .bind(cache_id)
        .bind(hash.as_str())
        .bind(nar_hash.map(|h| h.as_bytes().to_vec()))
        .bind(listing)
        .bind(now)
        .execute(&mut *c)
        .await?;
        Ok(())
    })
}

/// Binds a pending uploaded listing to the NAR its path was recorded with.
pub async fn bind_uploaded_listing(
    raw: Raw<'_>,
    cache_id: CacheId,
    hash: &StorePathHash,
    nar_hash: &NarHash,
) -> Result<(), DbError> {
    on_conn!(raw, c => {
        sqlx::query(
            "UPDATE nix_listings SET nar_hash = $3
             WHERE cache_id = $1 AND store_path_hash = $2 AND nar_hash IS NULL",
        )
        .bind(cache_id)
        .bind(hash.as_str())
        .bind(&nar_hash.as_bytes()[..])
        .execute(&mut *c)
        .await?;
        Ok(())
    })
}

/// The uploaded listing of a path, if it describes the NAR `nar_hash`.
pub async fn uploaded_listing(
    raw: Raw<'_>,
    cache_id: CacheId,
    hash: &StorePathHash,
    nar_hash: &NarHash,
) -> Result<Option<Vec<u8>>, DbError> {
    on_conn!(raw, c => {
        let row = sqlx::query(
            "SELECT listing FROM nix_listings
             WHERE cache_id = $1 AND store_path_hash = $2 AND nar_hash = $3",
        )
        .bind(cache_id)
        .bind(hash.as_str())
        .bind(&nar_hash.as_bytes()[..])
        .fetch_optional(&mut *c)
        .await?;
        row.map(|r| r.try_get::<Vec<u8>, _>("listing")).transpose().map_err(DbError::from)
    })
}

/// Deletes uploaded listings older than `before` that describe no path of
/// their cache any more (never bound, path deleted, or re-pushed with
/// another NAR). Returns how many went.
pub async fn prune_uploaded_listings(raw: Raw<'_>, before: i64) -> Result<u64, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query(
            "DELETE FROM nix_listings WHERE created_at < $1 AND NOT EXISTS (
                 SELECT 1 FROM objects o JOIN nars n ON n.id = o.nar_id
                 WHERE o.cache_id = nix_listings.cache_id
                   AND o.store_path_hash = nix_listings.store_path_hash
                   AND n.nar_hash = nix_listings.nar_hash)",
        )
        .bind(before)
        .execute(&mut *c)
        .await?;
        Ok(done.rows_affected())
    })
}

/// The listing Larder generated for a NAR, if any.
pub async fn nar_listing(raw: Raw<'_>, nar_id: NarId) -> Result<Option<Vec<u8>>, DbError> {
    on_conn!(raw, c => {
        let row = sqlx::query("SELECT listing FROM nar_listings WHERE nar_id = $1")
            .bind(nar_id)
            .fetch_optional(&mut *c)
            .await?;
        row.map(|r| r.try_get::<Vec<u8>, _>("listing")).transpose().map_err(DbError::from)
    })
}

/// Records a generated listing (a rerun or a concurrent request that made
/// the same one changes nothing). Returns whether a row was added: false if
/// one was there already or the NAR is gone.
pub async fn insert_nar_listing(
    raw: Raw<'_>,
    nar_id: NarId,
    listing: &[u8],
    now: i64,
) -> Result<bool, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query(
            "INSERT INTO nar_listings (nar_id, listing, created_at)
             SELECT id, $2, $3 FROM nars WHERE id = $1
             ON CONFLICT (nar_id) DO NOTHING",
        )
        .bind(nar_id)
        .bind(listing)
        .bind(now)
        .execute(&mut *c)
        .await?;
        Ok(done.rows_affected() == 1)
    })
}
