//! `pins`: named paths that, with their closure in the cache, never expire.

use sqlx::Row;

use super::{CacheId, DbError, Raw};
use crate::on_conn;
use larder_core::nix::store_path::StorePathHash;

/// A pin as stored (the API shows it as [`larder_core::wire::Pin`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// Pin name, unique in its cache.
    pub name: String,
    /// Absolute store path.
    pub store_path: String,
    /// Its hash part.
    pub store_path_hash: String,
    /// When it was set.
    pub created_at: i64,
}

/// Sets (or moves) a pin.
pub async fn set(
    raw: Raw<'_>,
    cache_id: CacheId,
    name: &str,
    hash: &StorePathHash,
    store_path: &str,
    now: i64,
) -> Result<(), DbError> {
    on_conn!(raw, c => {
        sqlx::query(
            "INSERT INTO pins (cache_id, name, store_path_hash, store_path, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (cache_id, name) DO UPDATE SET store_path_hash = excluded.store_path_hash,
                 store_path = excluded.store_path, created_at = excluded.created_at",
        )
        .bind(cache_id)
        .bind(name)
        .bind(hash.as_str())
        .bind(store_path)
        .bind(now)
        .execute(&mut *c)
        .await?;
        Ok(())
    })
}

/// Removes a pin; whether it existed.
pub async fn remove(raw: Raw<'_>, cache_id: CacheId, name: &str) -> Result<bool, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query("DELETE FROM pins WHERE cache_id = $1 AND name = $2")
            .bind(cache_id)
            .bind(name)
            .execute(&mut *c)
            .await?;
        Ok(done.rows_affected() > 0)
    })
}

/// The pins of a cache, by name.
pub async fn list(raw: Raw<'_>, cache_id: CacheId) -> Result<Vec<Pin>, DbError> {
    on_conn!(raw, c => {
        let rows = sqlx::query(
            "SELECT name, store_path, store_path_hash, created_at FROM pins WHERE cache_id = $1 ORDER BY name",
        )
        .bind(cache_id)
        .fetch_all(&mut *c)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Pin {
                    name: r.try_get("name")?,
                    store_path: r.try_get("store_path")?,
                    store_path_hash: r.try_get("store_path_hash")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    })
}
