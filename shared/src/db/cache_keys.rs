//! `cache_keys`: every signing key a cache has had (migration 0010). The
//! secret is sealed with the key-encryption key or named as a file on the
//! server; nothing here can sign without the KEK or the file
//! (`crate::signing_keys` does the crypto; only SQL lives here).

use sqlx::Row;

use super::{CacheId, Db, DbError, Raw};
use crate::on_conn;

/// Marker of a secret the migration copied as plain text, until sealed.
pub const PLAIN_PREFIX: &str = "plain:";

/// A key row. `Debug` leaves out the sealed secret.
#[derive(Clone)]
pub struct CacheKeyRecord {
    /// Row id: immutable, so decrypted keys are cached under it.
    pub id: i64,
    /// The cache.
    pub cache_id: CacheId,
    /// Key name in signatures (`demo`, `demo-2`, …), unique per cache.
    pub key_name: String,
    /// `name:base64`, for `trusted-public-keys`.
    pub public_key: String,
    /// Sealed secret (`v1:…`), or `None`.
    pub secret: Option<String>,
    /// A key file on the server instead of a sealed secret.
    pub key_file: Option<String>,
    /// Creation time.
    pub created_at: i64,
    /// When it stops signing; `None` = active.
    pub retires_at: Option<i64>,
}

impl CacheKeyRecord {
    /// Whether it signs at `now`.
    pub fn is_active(&self, now: i64) -> bool {
        self.retires_at.is_none_or(|t| t > now)
    }
}

impl std::fmt::Debug for CacheKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheKeyRecord")
            .field("id", &self.id)
            .field("cache_id", &self.cache_id)
            .field("key_name", &self.key_name)
            .field("public_key", &self.public_key)
            .field("key_file", &self.key_file)
            .field("retires_at", &self.retires_at)
            .finish_non_exhaustive()
    }
}

/// Where a new key's secret is.
#[derive(Clone, Copy)]
pub enum KeySecret<'a> {
    /// Sealed text (`v1:…`).
    Sealed(&'a str),
    /// A file on the server.
    File(&'a str),
}

/// A key row still holding the migration's plain text.
pub struct PlainKey {
    /// Row id.
    pub id: i64,
    /// Cache name (associated data of the seal).
    pub cache_name: String,
    /// `name:base64(64 bytes)`, without the marker.
    pub secret: String,
}

const COLUMNS: &str =
    "id, cache_id, key_name, public_key, secret, key_file, created_at, retires_at";

macro_rules! key_from_row {
    ($r:expr) => {{
        let r = $r;
        Ok::<_, DbError>(CacheKeyRecord {
            id: r.try_get("id")?,
            cache_id: r.try_get("cache_id")?,
            key_name: r.try_get("key_name")?,
            public_key: r.try_get("public_key")?,
            secret: r.try_get("secret")?,
            key_file: r.try_get("key_file")?,
            created_at: r.try_get("created_at")?,
            retires_at: r.try_get("retires_at")?,
        })
    }};
}

/// Adds a key; `None` if the cache already has a key of that name.
pub async fn insert(
    raw: Raw<'_>,
    cache_id: CacheId,
    key_name: &str,
    public_key: &str,
    secret: KeySecret<'_>,
    now: i64,
) -> Result<Option<CacheKeyRecord>, DbError> {
    let (sealed, file) = match secret {
        KeySecret::Sealed(s) => (Some(s), None),
        KeySecret::File(f) => (None, Some(f)),
    };
    let sql = format!(
        "INSERT INTO cache_keys (cache_id, key_name, public_key, secret, key_file, created_at)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (cache_id, key_name) DO NOTHING RETURNING {COLUMNS}"
    );
    on_conn!(raw, c => {
        let row = sqlx::query(sqlx::AssertSqlSafe(&*sql))
            .bind(cache_id)
            .bind(key_name)
            .bind(public_key)
            .bind(sealed)
            .bind(file)
            .bind(now)
            .fetch_optional(&mut *c)
            .await?;
        row.map(|r| key_from_row!(&r)).transpose()
    })
}

/// Every key of a cache, retired ones included, newest first.
pub async fn of_cache(raw: Raw<'_>, cache_id: CacheId) -> Result<Vec<CacheKeyRecord>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM cache_keys WHERE cache_id = $1 ORDER BY id DESC");
    on_conn!(raw, c => {
        let rows = sqlx::query(sqlx::AssertSqlSafe(&*sql)).bind(cache_id).fetch_all(&mut *c).await?;
        rows.iter().map(|r| key_from_row!(r)).collect()
    })
}

/// Every key of every cache, retired ones included, by cache and newest
/// first within it (the API's in-memory cache catalog).
pub async fn all(raw: Raw<'_>) -> Result<Vec<CacheKeyRecord>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM cache_keys ORDER BY cache_id, id DESC");
    on_conn!(raw, c => {
        let rows = sqlx::query(sqlx::AssertSqlSafe(&*sql)).fetch_all(&mut *c).await?;
        rows.iter().map(|r| key_from_row!(r)).collect()
    })
}

/// Every active key of every cache, with its cache's name (start-up check
/// that the KEK opens them all).
pub async fn all_active(raw: Raw<'_>, now: i64) -> Result<Vec<(String, CacheKeyRecord)>, DbError> {
    let sql = "SELECT c.name AS cache_name, k.id, k.cache_id, k.key_name, k.public_key, k.secret,
                      k.key_file, k.created_at, k.retires_at
               FROM cache_keys k JOIN caches c ON c.id = k.cache_id
               WHERE k.retires_at IS NULL OR k.retires_at > $1 ORDER BY k.id";
    on_conn!(raw, c => {
        let rows = sqlx::query(sql).bind(now).fetch_all(&mut *c).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("cache_name")?, key_from_row!(r)?)))
            .collect()
    })
}

/// Makes every key of the cache older than `newest` retire at `at` (or
/// keeps an earlier retirement already set).
pub async fn retire_older(
    raw: Raw<'_>,
    cache_id: CacheId,
    newest: i64,
    at: i64,
) -> Result<u64, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query(
            "UPDATE cache_keys SET retires_at = $3
             WHERE cache_id = $1 AND id < $2 AND (retires_at IS NULL OR retires_at > $3)",
        )
        .bind(cache_id)
        .bind(newest)
        .bind(at)
        .execute(&mut *c)
        .await?;
        Ok(done.rows_affected())
    })
}

/// Clears the secret (sealed text or file path) of every key retired by
/// `now`: a retired key must not be able to sign again, even with the KEK.
pub async fn forget_retired(raw: Raw<'_>, now: i64) -> Result<u64, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query(
            "UPDATE cache_keys SET secret = NULL, key_file = NULL
             WHERE retires_at <= $1 AND (secret IS NOT NULL OR key_file IS NOT NULL)",
        )
        .bind(now)
        .execute(&mut *c)
        .await?;
        Ok(done.rows_affected())
    })
}

/// Key rows whose secret is still the migration's plain text.
pub async fn plain(raw: Raw<'_>) -> Result<Vec<PlainKey>, DbError> {
    let sql = "SELECT k.id, c.name AS cache_name, k.secret FROM cache_keys k
               JOIN caches c ON c.id = k.cache_id WHERE k.secret LIKE 'plain:%' ORDER BY k.id";
    on_conn!(raw, c => {
        let rows = sqlx::query(sql).fetch_all(&mut *c).await?;
        rows.iter()
            .map(|r| {
                let secret: String = r.try_get("secret")?;
                Ok(PlainKey {
                    id: r.try_get("id")?,
                    cache_name: r.try_get("cache_name")?,
                    secret: secret.strip_prefix(PLAIN_PREFIX).unwrap_or(&secret).to_owned(),
                })
            })
            .collect()
    })
}

/// Replaces a plain row's secret with its sealed form (only if still plain).
pub async fn seal(raw: Raw<'_>, id: i64, public_key: &str, sealed: &str) -> Result<bool, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query(
            "UPDATE cache_keys SET public_key = $2, secret = $3 WHERE id = $1 AND secret LIKE 'plain:%'",
        )
        .bind(id)
        .bind(public_key)
        .bind(sealed)
        .execute(&mut *c)
        .await?;
        Ok(done.rows_affected() > 0)
    })
}

/// Rewrites the key and cache tables so bytes of overwritten secrets (and
/// of the dropped `caches.keypair` column) leave the database files:
/// PostgreSQL `VACUUM FULL` (it nulls dropped columns while rewriting);
/// SQLite `VACUUM`, then a WAL checkpoint that truncates the log. Returns
/// `false` if SQLite could not truncate the WAL because another connection
/// was reading (the caller warns: old frames stay in the `-wal` file until
/// SQLite reuses it).
pub async fn purge_freed_pages(db: &Db) -> Result<bool, DbError> {
    match db {
        Db::Postgres(p) => {
            sqlx::query("VACUUM FULL caches, cache_keys")
                .execute(p)
                .await?;
            Ok(true)
        }
        Db::Sqlite(p) => {
            let mut c = p.acquire().await?;
            sqlx::query("VACUUM").execute(&mut *c).await?;
            let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&mut *c)
                .await?;
            let busy: i64 = row.try_get(0)?;
            Ok(busy == 0)
        }
    }
}
