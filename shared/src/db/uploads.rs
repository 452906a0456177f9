//! Uploads from stock `nix copy --to http://…` (docs/protocol.md "What real Nix
//! clients do").
//!
//! - `nix_uploads`: a NAR file PUT to `nar/<file>` whose narinfo has not
//!   arrived yet (Nix 2.8 uploads the NAR, then the narinfo naming it by URL).
//!   Consumed by [`take_pending`] in the transaction that records the path.
//! - `nix_upload_urls`: the uploader's URL, kept answering in its compression
//!   until `expires_at` (Nix 2.8 caches the narinfo it uploaded). Its
//!   `object_id` becomes NULL when the path leaves the cache, which stops it
//!   at once; the sweeper deletes such rows and expired ones.
//!
//! NAR listings (`.ls`) are in [`super::listings`].
//!
//! Upload files are content-addressed (`uploads/…/<filehash>…`): several rows,
//! in several caches, may name one. [`upload_key_in_use`] tells the sweeper
//! whether a file may go.

use sqlx::{AssertSqlSafe, Row};

use super::{CacheId, DbError, ObjectId, Raw, corrupt, key_column};
use crate::on_conn;
use crate::storage::ObjectKey;
use larder_core::nix::hash::{FileHash, NarHash};
use larder_core::nix::narinfo::Compression;

/// How long an uploader's URL keeps answering after its (last) push: Nix 2.8
/// caches the narinfo it uploaded for 30 days (`narinfo-cache-positive-ttl`)
/// and fetches that URL directly; one more day for clock skew.
pub const URL_RETENTION_SECS: i64 = 31 * 24 * 3600;

/// What an uploaded NAR file turned out to be (the same for every upload of
/// these bytes: all of it is derived from the file's content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedFile {
    /// SHA-256 of the file as uploaded.
    pub file_hash: FileHash,
    /// Its size.
    pub file_size: i64,
    /// Detected from its bytes.
    pub compression: Compression,
    /// SHA-256 of the decompressed NAR.
    pub nar_hash: NarHash,
    /// Size of the decompressed NAR.
    pub nar_size: i64,
    /// Storage key of the file as uploaded; `None` for `none`, whose bytes
    /// are the NAR itself.
    pub upload_key: Option<ObjectKey>,
}

/// A pending upload: a NAR file waiting for its narinfo.
#[derive(Debug, Clone)]
pub struct PendingUpload {
    /// Row id.
    pub id: i64,
    /// Cache it was uploaded to.
    pub cache_id: CacheId,
    /// `<filehash>.nar[.ext]`, the URL's last segment.
    pub file_name: String,
    /// What the file is.
    pub file: UploadedFile,
    /// Decompressed copy in staging; `None` when the NAR was already stored.
    pub staging_key: Option<ObjectKey>,
    /// Upload time.
    pub created_at: i64,
}

/// A served uploader URL.
#[derive(Debug, Clone)]
pub struct UploadUrl {
    /// Row id.
    pub id: i64,
    /// The path it belongs to.
    pub object_id: ObjectId,
    /// `<filehash>.nar[.ext]`.
    pub file_name: String,
    /// What the file is; `upload_key` is always set.
    pub file: UploadedFile,
    /// Until when it answers.
    pub expires_at: i64,
}

const PENDING_COLUMNS: &str = "id, cache_id, file_name, file_hash, file_size, compression, \
     nar_hash, nar_size, staging_key, upload_key, created_at";
const URL_COLUMNS: &str = "u.id, u.object_id, u.file_name, u.file_hash, u.file_size, \
     u.compression, u.nar_hash, u.nar_size, u.upload_key, u.expires_at";

macro_rules! file_from_row {
    ($r:expr) => {{
        let r = $r;
        let file_hash: Vec<u8> = r.try_get("file_hash")?;
        let nar_hash: Vec<u8> = r.try_get("nar_hash")?;
        let compression: String = r.try_get("compression")?;
        Ok::<_, DbError>(UploadedFile {
            file_hash: FileHash::from_slice(&file_hash).map_err(|e| corrupt("file_hash", e))?,
            file_size: r.try_get("file_size")?,
            compression: compression.parse().map_err(|e| corrupt("compression", e))?,
            nar_hash: NarHash::from_slice(&nar_hash).map_err(|e| corrupt("nar_hash", e))?,
            nar_size: r.try_get("nar_size")?,
            upload_key: key_column("upload_key", r.try_get("upload_key")?)?,
        })
    }};
}

macro_rules! pending_from_row {
    ($r:expr) => {{
        let r = $r;
        Ok::<_, DbError>(PendingUpload {
            id: r.try_get("id")?,
            cache_id: r.try_get("cache_id")?,
            file_name: r.try_get("file_name")?,
            file: file_from_row!(r)?,
            staging_key: key_column("nix_uploads.staging_key", r.try_get("staging_key")?)?,
            created_at: r.try_get("created_at")?,
        })
    }};
}

macro_rules! url_from_row {
    ($r:expr) => {{
        let r = $r;
        let file = file_from_row!(r)?;
        if file.upload_key.is_none() {
            return Err(corrupt("nix_upload_urls.upload_key", "NULL"));
        }
        Ok::<_, DbError>(UploadUrl {
            id: r.try_get("id")?,
            object_id: r.try_get("object_id")?,
            file_name: r.try_get("file_name")?,
            file,
            expires_at: r.try_get("expires_at")?,
        })
    }};
}

/// Records (or replaces) the pending upload of `file_name` in a cache;
/// returns its id.
pub async fn upsert_pending(
    raw: Raw<'_>,
    cache_id: CacheId,
    file_name: &str,
    file: &UploadedFile,
    staging_key: Option<&ObjectKey>,
    now: i64,
) -> Result<i64, DbError> {
    on_conn!(raw, c => {
        let row = sqlx::query(
            "INSERT INTO nix_uploads (cache_id, file_name, file_hash, file_size, compression,
                 nar_hash, nar_size, staging_key, upload_key, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (cache_id, file_name) DO UPDATE SET
                 file_hash = excluded.file_hash, file_size = excluded.file_size,
                 compression = excluded.compression, nar_hash = excluded.nar_hash,
                 nar_size = excluded.nar_size, staging_key = excluded.staging_key,
                 upload_key = excluded.upload_key, created_at = excluded.created_at
             RETURNING id",
        )
        .bind(cache_id)
        .bind(file_name)
        .bind(&file.file_hash.as_bytes()[..])
        .bind(file.file_size)
        .bind(file.compression.as_str())
        .bind(&file.nar_hash.as_bytes()[..])
        .bind(file.nar_size)
        .bind(staging_key.map(ObjectKey::as_str))
        .bind(file.upload_key.as_ref().map(ObjectKey::as_str))
        .bind(now)
        .fetch_one(&mut *c)
        .await?;
        row.try_get::<i64, _>("id").map_err(DbError::from)
    })
}

/// The pending upload of `file_name` in a cache.
pub async fn find_pending(
    raw: Raw<'_>,
    cache_id: CacheId,
    file_name: &str,
) -> Result<Option<PendingUpload>, DbError> {
    let sql =
        format!("SELECT {PENDING_COLUMNS} FROM nix_uploads WHERE cache_id = $1 AND file_name = $2");
    on_conn!(raw, c => {
        let row = sqlx::query(AssertSqlSafe(&*sql))
            .bind(cache_id)
            .bind(file_name)
            .fetch_optional(&mut *c)
            .await?;
        row.map(|r| pending_from_row!(&r)).transpose()
    })
}

/// Claims a pending upload: deletes it and returns it as it was, or `None`
/// if another request claimed it first. Use inside the transaction that
/// records the path, so exactly one narinfo consumes a staged copy.
pub async fn take_pending(raw: Raw<'_>, id: i64) -> Result<Option<PendingUpload>, DbError> {
    let sql = format!("DELETE FROM nix_uploads WHERE id = $1 RETURNING {PENDING_COLUMNS}");
    on_conn!(raw, c => {
        let row = sqlx::query(AssertSqlSafe(&*sql)).bind(id).fetch_optional(&mut *c).await?;
        row.map(|r| pending_from_row!(&r)).transpose()
    })
}

/// What is known about the file with `file_hash` from any earlier upload
/// (pending or served, in any cache): uploading it again proves possession
/// by its hash, so nothing of it needs decompressing or staging again.
pub async fn known_file(
    raw: Raw<'_>,
    file_hash: &FileHash,
) -> Result<Option<UploadedFile>, DbError> {
    let hash = &file_hash.as_bytes()[..];
    on_conn!(raw, c => {
        let row = sqlx::query(
            "SELECT file_hash, file_size, compression, nar_hash, nar_size, upload_key
             FROM nix_upload_urls WHERE file_hash = $1 LIMIT 1",
        )
        .bind(hash)
        .fetch_optional(&mut *c)
        .await?;
        let row = match row {
            Some(r) => Some(r),
            None => {
                sqlx::query(
                    "SELECT file_hash, file_size, compression, nar_hash, nar_size, upload_key
                     FROM nix_uploads WHERE file_hash = $1 LIMIT 1",
                )
                .bind(hash)
                .fetch_optional(&mut *c)
                .await?
            }
        };
        row.map(|r| file_from_row!(&r)).transpose()
    })
}

/// The live uploader URL `file_name` of a cache: unexpired, and its path
/// still in that cache.
pub async fn find_url(
    raw: Raw<'_>,
    cache_id: CacheId,
    file_name: &str,
    now: i64,
) -> Result<Option<UploadUrl>, DbError> {
    let sql = format!(
        "SELECT {URL_COLUMNS} FROM nix_upload_urls u JOIN objects o ON o.id = u.object_id
         WHERE u.cache_id = $1 AND o.cache_id = $1 AND u.file_name = $2 AND u.expires_at > $3
         ORDER BY u.expires_at DESC LIMIT 1"
    );
    on_conn!(raw, c => {
        let row = sqlx::query(AssertSqlSafe(&*sql))
            .bind(cache_id)
            .bind(file_name)
            .bind(now)
            .fetch_optional(&mut *c)
            .await?;
        row.map(|r| url_from_row!(&r)).transpose()
    })
}

/// Keeps the uploader URL `file_name` answering for `object_id` until
/// `expires_at`; `created_at` is the last push (a re-push moves both).
/// `file.upload_key` must be set.
pub async fn upsert_url(
    raw: Raw<'_>,
    cache_id: CacheId,
    object_id: ObjectId,
    file_name: &str,
    file: &UploadedFile,
    now: i64,
    expires_at: i64,
) -> Result<(), DbError> {
    let key = file
        .upload_key
        .as_ref()
        .ok_or_else(|| corrupt("nix_upload_urls.upload_key", "no upload file to serve"))?;
    on_conn!(raw, c => {
        sqlx::query(
            "INSERT INTO nix_upload_urls (object_id, cache_id, file_name, file_hash, file_size,
                 compression, nar_hash, nar_size, upload_key, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (object_id, file_name) DO UPDATE SET
                 file_hash = excluded.file_hash, file_size = excluded.file_size,
                 compression = excluded.compression, nar_hash = excluded.nar_hash,
                 nar_size = excluded.nar_size, upload_key = excluded.upload_key,
                 created_at = excluded.created_at, expires_at = excluded.expires_at",
        )
        .bind(object_id)
        .bind(cache_id)
        .bind(file_name)
        .bind(&file.file_hash.as_bytes()[..])
        .bind(file.file_size)
        .bind(file.compression.as_str())
        .bind(&file.nar_hash.as_bytes()[..])
        .bind(file.nar_size)
        .bind(key.as_str())
        .bind(now)
        .bind(expires_at)
        .execute(&mut *c)
        .await?;
        Ok(())
    })
}

/// Forgets `file_name` in a cache, pending or served (its data is gone:
/// the next push must upload it again rather than be told it exists).
pub async fn forget_file(raw: Raw<'_>, cache_id: CacheId, file_name: &str) -> Result<(), DbError> {
    on_conn!(raw, c => {
        sqlx::query("DELETE FROM nix_uploads WHERE cache_id = $1 AND file_name = $2")
            .bind(cache_id)
            .bind(file_name)
            .execute(&mut *c)
            .await?;
        sqlx::query("DELETE FROM nix_upload_urls WHERE cache_id = $1 AND file_name = $2")
            .bind(cache_id)
            .bind(file_name)
            .execute(&mut *c)
            .await?;
        Ok(())
    })
}

/// Keys a deleted row held, for the sweeper to release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleasedKeys {
    /// Decompressed copies in staging.
    pub staging_keys: Vec<ObjectKey>,
    /// Upload files, possibly still named by other rows.
    pub upload_keys: Vec<ObjectKey>,
}

/// Deletes up to `limit` pending uploads made before `before` (their
/// narinfo never came) and returns the keys they held.
pub async fn take_stale_pending(
    raw: Raw<'_>,
    before: i64,
    limit: i64,
) -> Result<ReleasedKeys, DbError> {
    on_conn!(raw, c => {
        let rows = sqlx::query(
            "DELETE FROM nix_uploads WHERE id IN
                 (SELECT id FROM nix_uploads WHERE created_at < $1 ORDER BY id LIMIT $2)
             RETURNING staging_key, upload_key",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *c)
        .await?;
        let mut out = ReleasedKeys::default();
        for r in &rows {
            out.staging_keys.extend(key_column("nix_uploads.staging_key", r.try_get("staging_key")?)?);
            out.upload_keys.extend(key_column("nix_uploads.upload_key", r.try_get("upload_key")?)?);
        }
        Ok(out)
    })
}

/// Deletes up to `limit` uploader URLs that expired by `now`, or whose path
/// left its cache and that were last pushed before `before`, returning their
/// upload keys. (A URL row is pushed after its file was last written, so the
/// file of a row dropped here is at least as old as `before`, unless a newer
/// upload wrote it again and has a row of its own.)
pub async fn take_dead_urls(
    raw: Raw<'_>,
    now: i64,
    before: i64,
    limit: i64,
) -> Result<Vec<ObjectKey>, DbError> {
    on_conn!(raw, c => {
        let rows = sqlx::query(
            "DELETE FROM nix_upload_urls WHERE id IN
                 (SELECT id FROM nix_upload_urls WHERE object_id IS NULL AND created_at < $2
                  UNION SELECT id FROM nix_upload_urls WHERE expires_at <= $1
                  ORDER BY id LIMIT $3)
             RETURNING upload_key",
        )
        .bind(now)
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *c)
        .await?;
        let mut keys = Vec::new();
        for r in &rows {
            keys.extend(key_column("nix_upload_urls.upload_key", r.try_get("upload_key")?)?);
        }
        Ok(keys)
    })
}

/// Whether any pending upload or uploader URL still names this file.
pub async fn upload_key_in_use(raw: Raw<'_>, key: &ObjectKey) -> Result<bool, DbError> {
    on_conn!(raw, c => {
        let row = sqlx::query(
            "SELECT 1 AS one FROM nix_upload_urls WHERE upload_key = $1
             UNION ALL SELECT 1 AS one FROM nix_uploads WHERE upload_key = $1 LIMIT 1",
        )
        .bind(key.as_str())
        .fetch_optional(&mut *c)
        .await?;
        Ok(row.is_some())
    })
}
