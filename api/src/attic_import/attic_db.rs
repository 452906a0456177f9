//! Attic's database, opened read-only and read through its current schema
//! (zhaofengli/attic `server/src/database/migration`): tables `cache`,
//! `object`, `nar`, `chunkref`, `chunk`. Timestamps are converted to Unix
//! seconds in SQL, the one place the two dialects differ here. Nothing in
//! this module writes: SQLite is opened `mode=ro`, and every PostgreSQL
//! session has `default_transaction_read_only = on`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AssertSqlSafe, Row};

use larder_shared::db::{Db, DbError};
use larder_shared::on_conn;

/// A cache row of Attic.
#[derive(Clone)]
pub struct AtticCache {
    /// Attic's id.
    pub id: i64,
    /// Name, as Attic validated it.
    pub name: String,
    /// Nix secret key `name:base64`.
    pub keypair: String,
    /// Visibility.
    pub is_public: bool,
    /// Store dir.
    pub store_dir: String,
    /// Priority.
    pub priority: i64,
    /// JSON array of key names.
    pub upstream_cache_key_names: String,
    /// Seconds, `None` = Attic's global default.
    pub retention_period: Option<i64>,
    /// Soft-deleted (`deleted_at` set): not imported.
    pub deleted: bool,
}

impl std::fmt::Debug for AtticCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtticCache")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// An object row of Attic with its NAR row.
#[derive(Debug, Clone)]
pub struct AtticObject {
    /// 32-char hash part.
    pub store_path_hash: String,
    /// Absolute store path.
    pub store_path: String,
    /// JSON array of reference base names.
    pub references: String,
    /// System.
    pub system: Option<String>,
    /// Deriver.
    pub deriver: Option<String>,
    /// JSON array of signatures.
    pub sigs: String,
    /// Content address.
    pub ca: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, if ever accessed.
    pub last_accessed_at: Option<i64>,
    /// Token subject of the uploader.
    pub created_by: Option<String>,
    /// Attic's NAR id.
    pub nar_id: i64,
    /// `V` valid, `P` pending upload, `C`, `D`.
    pub nar_state: String,
    /// `sha256:<hex>`.
    pub nar_hash: String,
    /// Uncompressed size.
    pub nar_size: i64,
    /// Number of chunks the NAR row claims.
    pub num_chunks: i64,
}

/// One chunk reference of a NAR, in order; `None` fields mean the chunk row
/// is gone (Attic sets `chunk_id` NULL when a chunk is deleted).
#[derive(Debug, Clone)]
pub struct AtticChunk {
    /// Position in the NAR.
    pub seq: i64,
    /// The chunk row, if any.
    pub stored: Option<StoredChunk>,
}

/// A chunk row of Attic.
#[derive(Debug, Clone)]
pub struct StoredChunk {
    /// `V` when usable.
    pub state: String,
    /// Uncompressed size.
    pub chunk_size: i64,
    /// Compressed size, if confirmed.
    pub file_size: Option<i64>,
    /// `none`, `zstd`, `br`, `xz`.
    pub compression: String,
    /// JSON: `{"Local":{"name":…}}` or `{"S3":{…}}`.
    pub remote_file: String,
}

/// Opens Attic's database read-only.
pub async fn open(url: &str) -> Result<Db, DbError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let options =
            PgConnectOptions::from_str(url)?.options([("default_transaction_read_only", "on")]);
        let pool = larder_shared::db::pool_options::<sqlx::Postgres>()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Ok(Db::Postgres(pool))
    } else if url.starts_with("sqlite:") {
        // Attic's URL usually says `mode=rwc`; drop the query, open read-only.
        let path = url.split('?').next().unwrap_or(url);
        let options = SqliteConnectOptions::from_str(path)?
            .read_only(true)
            .create_if_missing(false)
            .busy_timeout(Duration::from_secs(30));
        let pool = larder_shared::db::pool_options::<sqlx::Sqlite>()
            .max_connections(2)
            .connect_with(options)
            .await?;
        Ok(Db::Sqlite(pool))
    } else {
        Err(DbError::UnsupportedUrl)
    }
}

/// `col` as Unix seconds (NULL stays NULL).
fn unix(db: &Db, col: &str) -> String {
    match db {
        Db::Postgres(_) => format!("CAST(EXTRACT(EPOCH FROM {col}) AS BIGINT)"),
        Db::Sqlite(_) => format!("CAST(strftime('%s', {col}) AS INTEGER)"),
    }
}

/// Every cache, by name.
pub async fn caches(db: &Db) -> Result<Vec<AtticCache>, DbError> {
    let sql = "SELECT id, name, keypair, is_public, store_dir, CAST(priority AS BIGINT) AS priority,
                      upstream_cache_key_names, CAST(retention_period AS BIGINT) AS retention_period,
                      CAST(CASE WHEN deleted_at IS NULL THEN 0 ELSE 1 END AS BIGINT) AS deleted
               FROM cache ORDER BY name";
    let mut conn = db.conn().await?;
    on_conn!(conn.raw(), c => {
        let rows = sqlx::query(sql).fetch_all(&mut *c).await?;
        rows.iter().map(|r| Ok(AtticCache {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            keypair: r.try_get("keypair")?,
            is_public: r.try_get("is_public")?,
            store_dir: r.try_get("store_dir")?,
            priority: r.try_get("priority")?,
            upstream_cache_key_names: r.try_get("upstream_cache_key_names")?,
            retention_period: r.try_get("retention_period")?,
            deleted: r.try_get::<i64, _>("deleted")? != 0,
        })).collect()
    })
}

/// Every object of a cache with its NAR, oldest first.
pub async fn objects(db: &Db, cache_id: i64) -> Result<Vec<AtticObject>, DbError> {
    let sql = format!(
        "SELECT o.store_path_hash, o.store_path, o.\"references\" AS refs, o.system, o.deriver,
                o.sigs, o.ca, {} AS created_at, {} AS last_accessed_at, o.created_by,
                n.id AS nar_id, CAST(n.state AS TEXT) AS nar_state, n.nar_hash, n.nar_size,
                CAST(n.num_chunks AS BIGINT) AS num_chunks
         FROM object o JOIN nar n ON n.id = o.nar_id
         WHERE o.cache_id = $1 ORDER BY o.id",
        unix(db, "o.created_at"),
        unix(db, "o.last_accessed_at")
    );
    let mut conn = db.conn().await?;
    on_conn!(conn.raw(), c => {
        let rows = sqlx::query(AssertSqlSafe(&*sql)).bind(cache_id).fetch_all(&mut *c).await?;
        rows.iter().map(|r| Ok(AtticObject {
            store_path_hash: r.try_get("store_path_hash")?,
            store_path: r.try_get("store_path")?,
            references: r.try_get("refs")?,
            system: r.try_get("system")?,
            deriver: r.try_get("deriver")?,
            sigs: r.try_get("sigs")?,
            ca: r.try_get("ca")?,
            created_at: r.try_get("created_at")?,
            last_accessed_at: r.try_get("last_accessed_at")?,
            created_by: r.try_get("created_by")?,
            nar_id: r.try_get("nar_id")?,
            nar_state: r.try_get("nar_state")?,
            nar_hash: r.try_get("nar_hash")?,
            nar_size: r.try_get("nar_size")?,
            num_chunks: r.try_get("num_chunks")?,
        })).collect()
    })
}

/// The chunks of a NAR in order.
pub async fn chunks(db: &Db, nar_id: i64) -> Result<Vec<AtticChunk>, DbError> {
    let sql =
        "SELECT CAST(r.seq AS BIGINT) AS seq, c.id AS chunk_id, CAST(c.state AS TEXT) AS state,
                      c.chunk_size, c.file_size, c.compression, c.remote_file
               FROM chunkref r LEFT JOIN chunk c ON c.id = r.chunk_id
               WHERE r.nar_id = $1 ORDER BY r.seq";
    let mut conn = db.conn().await?;
    on_conn!(conn.raw(), c => {
        let rows = sqlx::query(sql).bind(nar_id).fetch_all(&mut *c).await?;
        rows.iter().map(|r| {
            let id: Option<i64> = r.try_get("chunk_id")?;
            let stored = match id {
                None => None,
                Some(_) => Some(StoredChunk {
                    state: r.try_get("state")?,
                    chunk_size: r.try_get("chunk_size")?,
                    file_size: r.try_get("file_size")?,
                    compression: r.try_get("compression")?,
                    remote_file: r.try_get("remote_file")?,
                }),
            };
            Ok(AtticChunk { seq: r.try_get("seq")?, stored })
        }).collect()
    })
}
