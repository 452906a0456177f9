//! `caches`: tenants, each with its own visibility and retention; their
//! signing keys are rows of `cache_keys` ([`super::cache_keys`]).

use sqlx::{AssertSqlSafe, Row};

use super::{CacheId, DbError, Raw, corrupt};
use crate::on_conn;
use larder_core::CacheName;
use larder_core::nix::store_path::StoreDir;

/// A cache as stored.
#[derive(Clone)]
pub struct CacheRecord {
    /// Row id.
    pub id: CacheId,
    /// Validated name.
    pub name: CacheName,
    /// Public caches grant pull to everyone.
    pub is_public: bool,
    /// Store directory advertised in `nix-cache-info`, and the one narinfos
    /// are served under.
    pub store_dir: StoreDir,
    /// Substituter priority advertised in `nix-cache-info`.
    pub priority: i64,
    /// Key names whose signatures mark paths as upstream (skipped by `push`).
    pub upstream_cache_key_names: Vec<String>,
    /// Seconds; `None` = global default; `Some(0)` = keep forever.
    pub retention_period: Option<i64>,
    /// Creation time.
    pub created_at: i64,
}

impl std::fmt::Debug for CacheRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("is_public", &self.is_public)
            .finish_non_exhaustive()
    }
}

/// Fields of a new cache.
#[derive(Debug, Clone)]
pub struct NewCache<'a> {
    /// Name.
    pub name: &'a CacheName,
    /// Visibility.
    pub is_public: bool,
    /// Store dir.
    pub store_dir: &'a StoreDir,
    /// Priority.
    pub priority: i64,
    /// Upstream key names.
    pub upstream_cache_key_names: &'a [String],
    /// Retention override.
    pub retention_period: Option<i64>,
}

/// A partial update: `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct CacheUpdate {
    /// New visibility.
    pub is_public: Option<bool>,
    /// New store dir.
    pub store_dir: Option<StoreDir>,
    /// New priority.
    pub priority: Option<i64>,
    /// New upstream key names.
    pub upstream_cache_key_names: Option<Vec<String>>,
    /// `Some(None)` resets to the global default.
    pub retention_period: Option<Option<i64>>,
}

const COLUMNS: &str = "id, name, is_public, store_dir, priority, upstream_cache_key_names, retention_period, created_at";

macro_rules! cache_from_row {
    ($r:expr) => {{
        let r = $r;
        let name: String = r.try_get("name")?;
        let store_dir: String = r.try_get("store_dir")?;
        let upstream: String = r.try_get("upstream_cache_key_names")?;
        Ok::<_, DbError>(CacheRecord {
            id: r.try_get("id")?,
            name: name.parse().map_err(|e| corrupt("caches.name", e))?,
            is_public: r.try_get("is_public")?,
            store_dir: store_dir
                .parse()
                .map_err(|e| corrupt("caches.store_dir", e))?,
            priority: r.try_get("priority")?,
            upstream_cache_key_names: serde_json::from_str(&upstream)
                .map_err(|e| corrupt("caches.upstream_cache_key_names", e))?,
            retention_period: r.try_get("retention_period")?,
            created_at: r.try_get("created_at")?,
        })
    }};
}

/// Creates a cache; `None` if the name is taken.
pub async fn create(
    raw: Raw<'_>,
    new: &NewCache<'_>,
    now: i64,
) -> Result<Option<CacheRecord>, DbError> {
    let upstream =
        serde_json::to_string(new.upstream_cache_key_names).map_err(|e| corrupt("upstream", e))?;
    let sql = format!(
        "INSERT INTO caches (name, is_public, store_dir, priority, upstream_cache_key_names, retention_period, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING RETURNING {COLUMNS}"
    );
    on_conn!(raw, c => {
        let row = sqlx::query(AssertSqlSafe(&*sql))
            .bind(new.name.as_str())
            .bind(new.is_public)
            .bind(new.store_dir.as_str())
            .bind(new.priority)
            .bind(&upstream)
            .bind(new.retention_period)
            .bind(now)
            .fetch_optional(&mut *c)
            .await?;
        row.map(|r| cache_from_row!(&r)).transpose()
    })
}

/// Looks a cache up by name.
pub async fn get_by_name(raw: Raw<'_>, name: &CacheName) -> Result<Option<CacheRecord>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM caches WHERE name = $1");
    on_conn!(raw, c => {
        let row = sqlx::query(AssertSqlSafe(&*sql)).bind(name.as_str()).fetch_optional(&mut *c).await?;
        row.map(|r| cache_from_row!(&r)).transpose()
    })
}

/// Every cache, by name.
pub async fn list(raw: Raw<'_>) -> Result<Vec<CacheRecord>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM caches ORDER BY name");
    on_conn!(raw, c => {
        let rows = sqlx::query(AssertSqlSafe(&*sql)).fetch_all(&mut *c).await?;
        rows.iter().map(|r| cache_from_row!(r)).collect()
    })
}

/// Applies a partial update; returns the new record, `None` if gone.
pub async fn update(
    raw: Raw<'_>,
    id: CacheId,
    u: &CacheUpdate,
) -> Result<Option<CacheRecord>, DbError> {
    let upstream = u
        .upstream_cache_key_names
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| corrupt("upstream", e))?;
    let (set_retention, retention) = match u.retention_period {
        Some(v) => (true, v),
        None => (false, None),
    };
    let sql = format!(
        "UPDATE caches SET
            is_public = COALESCE($2, is_public),
            store_dir = COALESCE($3, store_dir),
            priority = COALESCE($4, priority),
            upstream_cache_key_names = COALESCE($5, upstream_cache_key_names),
            retention_period = CASE WHEN $6 THEN $7 ELSE retention_period END
         WHERE id = $1 RETURNING {COLUMNS}"
    );
    on_conn!(raw, c => {
        let row = sqlx::query(AssertSqlSafe(&*sql))
            .bind(id)
            .bind(u.is_public)
            .bind(u.store_dir.as_ref().map(StoreDir::as_str))
            .bind(u.priority)
            .bind(upstream.as_deref())
            .bind(set_retention)
            .bind(retention)
            .fetch_optional(&mut *c)
            .await?;
        row.map(|r| cache_from_row!(&r)).transpose()
    })
}

/// Deletes a cache and (by cascade) its objects; NARs and chunks they
/// referenced become garbage for GC. Returns whether it existed.
pub async fn delete(raw: Raw<'_>, id: CacheId) -> Result<bool, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query("DELETE FROM caches WHERE id = $1").bind(id).execute(&mut *c).await?;
        Ok(done.rows_affected() > 0)
    })
}
