//! `objects`: a store path in one cache, pointing at a shared NAR.
//!
//! Every read of NAR data goes through [`nar_in_cache`], so knowing a NAR
//! hash never reads another cache's data.

use sqlx::{AssertSqlSafe, Row};

use super::nars::{NarRecord, nar_from_row};
use super::object_meta::{meta_from_row, refs_column};
use super::{CacheId, DbError, NarId, ObjectId, Raw, corrupt, object_refs, placeholders};
use crate::on_conn;
use larder_core::nix::hash::NarHash;
use larder_core::nix::store_path::{AbsoluteStorePath, StorePath, StorePathHash};

pub use super::object_meta::ObjectMeta;

/// An object with its NAR.
#[derive(Debug, Clone)]
pub struct ObjectRecord {
    /// Row id.
    pub id: ObjectId,
    /// Owning cache.
    pub cache_id: CacheId,
    /// Metadata.
    pub meta: ObjectMeta,
    /// Pushed (or last re-pushed) at.
    pub created_at: i64,
    /// Last recorded access.
    pub last_accessed_at: i64,
    /// Who pushed it (a token subject; Attic's uploader on import); `None`
    /// for anonymous pushes and paths pushed before the audit trail.
    pub created_by: Option<String>,
    /// The NAR.
    pub nar: NarRecord,
}

const NAR_COLUMNS: &str = "n.id, n.nar_hash, n.nar_size, n.state, n.staging_key, n.staged_checksum, \
     n.chunk_list, n.file_size, n.chunk_sizes, n.frames_digest, n.created_at, n.layout_epoch, \
     (SELECT epoch FROM layout_epoch WHERE id = 1) AS epoch_now";

/// Whether an upload may change which NAR an existing path of the cache
/// points at (first push wins, docs/protocol.md "Published paths").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Only the same NAR again (a refresh), or a new NAR for a path whose
    /// stored NAR is broken (a repair).
    Never,
    /// Any NAR: the uploader holds the `d` permission and asked for it. The
    /// old NAR is then released as a delete releases it (GC takes it once
    /// no object refers to it).
    Allowed,
}

/// Metadata columns an upload writes; the same NAR again keeps the first
/// push's values (what hosts hold must not change under them).
const META_COLUMNS: [&str; 8] = [
    "store_path",
    "refs",
    "deriver",
    "sigs",
    "ca",
    "system",
    "created_at",
    "created_by",
];

/// The upsert, decided in one statement so two racing uploads cannot both
/// win: the `DO UPDATE` applies only when the NAR is the same, the old NAR
/// is broken, or replacing is allowed (`$11`); otherwise no row comes back.
fn upsert_sql() -> String {
    let keep = "objects.nar_id = excluded.nar_id AND NOT $11";
    let meta = META_COLUMNS
        .iter()
        .map(|c| format!("{c} = CASE WHEN {keep} THEN objects.{c} ELSE excluded.{c} END"))
        .collect::<Vec<_>>()
        .join(",\n                ");
    format!(
        "INSERT INTO objects (cache_id, store_path_hash, store_path, nar_id, refs, deriver, sigs, ca, system, created_at, last_accessed_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $12)
         ON CONFLICT (cache_id, store_path_hash) DO UPDATE SET
                nar_id = excluded.nar_id,
                {meta},
                last_accessed_at = CASE WHEN excluded.created_at > objects.last_accessed_at
                                        THEN excluded.created_at ELSE objects.last_accessed_at END
         WHERE objects.nar_id = excluded.nar_id OR $11
            OR EXISTS (SELECT 1 FROM nars b WHERE b.id = objects.nar_id AND b.state = 'broken')
         RETURNING id, refs"
    )
}

/// Links a store path in a cache to a NAR. A new path is inserted; the same
/// NAR again refreshes the path's use and keeps its first metadata; another
/// NAR replaces the old one only as `replace` and a broken old NAR allow.
/// The reverse reference index ([`super::object_refs`]) is made to match
/// the row's references in the same transaction. `created_by` (the pusher)
/// is metadata: the first push's stays. `None`: the path exists with another
/// NAR, nothing changed.
#[allow(clippy::too_many_arguments)]
pub async fn upsert(
    mut raw: Raw<'_>,
    cache_id: CacheId,
    hash: &StorePathHash,
    nar_id: NarId,
    meta: &ObjectMeta,
    now: i64,
    replace: Replace,
    created_by: Option<&str>,
) -> Result<Option<ObjectId>, DbError> {
    let sql = upsert_sql();
    let written: Option<(ObjectId, String)> = on_conn!(raw.reborrow(), c => {
        let row = sqlx::query(AssertSqlSafe(&*sql))
        .bind(cache_id)
        .bind(hash.as_str())
        .bind(meta.store_path.to_string())
        .bind(nar_id)
        .bind(refs_column(&meta.references))
        .bind(meta.deriver.as_ref().map(StorePath::base_name))
        .bind(meta.sigs.join("\n"))
        .bind(meta.ca.as_deref())
        .bind(meta.system.as_deref())
        .bind(now)
        .bind(replace == Replace::Allowed)
        .bind(created_by)
        .fetch_optional(&mut *c)
        .await?;
        row.map(|r| Ok::<_, DbError>((r.try_get::<ObjectId, _>("id")?, r.try_get::<String, _>("refs")?)))
            .transpose()?
    });
    let Some((id, refs)) = written else {
        return Ok(None);
    };
    let hashes = object_refs::ref_hashes(hash.as_str(), refs.split_whitespace());
    object_refs::replace(raw, cache_id, id, &hashes).await?;
    Ok(Some(id))
}

/// Records a use at `now` of the paths of `cache_id` among `hashes`
/// (≤ [`super::chunks::BATCH`], sorted so concurrent callers lock rows in
/// one order) whose last use is before `older_than` (so a path used often
/// is written at most once per `now - older_than`).
///
/// Called in an upload's transaction, before the new object is written, on
/// the paths it references: on PostgreSQL the touched rows stay locked
/// until the upload commits, so a concurrent GC `DELETE` of one of them
/// waits, re-checks its idleness and keeps it (docs/gc.md).
pub async fn touch_by_hashes(
    raw: Raw<'_>,
    cache_id: CacheId,
    hashes: &[&str],
    now: i64,
    older_than: i64,
) -> Result<u64, DbError> {
    if hashes.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "UPDATE objects SET last_accessed_at = $1
         WHERE cache_id = $2 AND last_accessed_at < $3 AND store_path_hash IN ({})",
        placeholders(4, hashes.len())
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql)).bind(now).bind(cache_id).bind(older_than);
        for h in hashes {
            q = q.bind(*h);
        }
        Ok(q.execute(&mut *c).await?.rows_affected())
    })
}

/// A store path of a cache with its NAR.
pub async fn find(
    raw: Raw<'_>,
    cache_id: CacheId,
    hash: &StorePathHash,
) -> Result<Option<ObjectRecord>, DbError> {
    let sql = format!(
        "SELECT o.id AS object_id, o.cache_id, o.store_path, o.refs, o.deriver, o.sigs, o.ca, o.system,
                o.created_at AS object_created_at, o.last_accessed_at, o.created_by, {NAR_COLUMNS}
         FROM objects o JOIN nars n ON n.id = o.nar_id
         WHERE o.cache_id = $1 AND o.store_path_hash = $2"
    );
    on_conn!(raw, c => {
        let row = sqlx::query(AssertSqlSafe(&*sql)).bind(cache_id).bind(hash.as_str()).fetch_optional(&mut *c).await?;
        row.map(|r| {
            Ok::<_, DbError>(ObjectRecord {
                id: r.try_get("object_id")?,
                cache_id: r.try_get("cache_id")?,
                meta: meta_from_row!(&r)?,
                created_at: r.try_get("object_created_at")?,
                last_accessed_at: r.try_get("last_accessed_at")?,
                created_by: r.try_get("created_by")?,
                nar: nar_from_row!(&r)?,
            })
        })
        .transpose()
    })
}

/// The NAR with `nar_hash`, only if an object of `cache_id` refers to it.
pub async fn nar_in_cache(
    raw: Raw<'_>,
    cache_id: CacheId,
    nar_hash: &NarHash,
) -> Result<Option<NarRecord>, DbError> {
    let sql = format!(
        "SELECT {NAR_COLUMNS} FROM nars n
         WHERE n.nar_hash = $2 AND EXISTS (SELECT 1 FROM objects o WHERE o.nar_id = n.id AND o.cache_id = $1)"
    );
    on_conn!(raw, c => {
        let row = sqlx::query(AssertSqlSafe(&*sql)).bind(cache_id).bind(&nar_hash.as_bytes()[..]).fetch_optional(&mut *c).await?;
        row.map(|r| nar_from_row!(&r)).transpose()
    })
}

/// Which of `hashes` (≤ [`super::chunks::BATCH`]) the cache lacks; a path
/// whose NAR is broken counts as missing, so pushing it again repairs it.
///
/// With `touch = Some((now, older_than))`, the paths found are first marked
/// used at `now` ([`touch_by_hashes`]), and presence is decided after that
/// write: a path a concurrent GC deletes is either touched first (and kept:
/// GC re-checks idleness in its `DELETE`) or already gone (and reported
/// missing), never reported present and then deleted as idle.
pub async fn missing(
    mut raw: Raw<'_>,
    cache_id: CacheId,
    hashes: &[StorePathHash],
    touch: Option<(i64, i64)>,
) -> Result<Vec<StorePathHash>, DbError> {
    if hashes.is_empty() {
        return Ok(Vec::new());
    }
    if let Some((now, older_than)) = touch {
        let mut sorted: Vec<&str> = hashes.iter().map(StorePathHash::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        touch_by_hashes(raw.reborrow(), cache_id, &sorted, now, older_than).await?;
    }
    let marks = (2..hashes.len() + 2)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT o.store_path_hash FROM objects o JOIN nars n ON n.id = o.nar_id
         WHERE o.cache_id = $1 AND n.state <> 'broken' AND o.store_path_hash IN ({marks})"
    );
    let present: std::collections::HashSet<String> = on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql)).bind(cache_id);
        for h in hashes {
            q = q.bind(h.as_str());
        }
        let rows = q.fetch_all(&mut *c).await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("store_path_hash"))
            .collect::<Result<_, _>>()
            .map_err(|e| corrupt("objects.store_path_hash", e))?
    });
    Ok(hashes
        .iter()
        .filter(|h| !present.contains(h.as_str()))
        .cloned()
        .collect())
}

/// What [`delete`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedObject {
    /// The store path, in the directory it was pushed under.
    pub store_path: AbsoluteStorePath,
    /// The NAR row it pointed at.
    pub nar_id: NarId,
}

/// Removes a path from a cache and says what it was (`None`: not there).
/// Deletes before reading, so a SQLite transaction takes its write lock
/// first.
pub async fn delete(
    raw: Raw<'_>,
    cache_id: CacheId,
    hash: &StorePathHash,
) -> Result<Option<DeletedObject>, DbError> {
    on_conn!(raw, c => {
        let row = sqlx::query(
            "DELETE FROM objects WHERE cache_id = $1 AND store_path_hash = $2 RETURNING store_path, nar_id",
        )
        .bind(cache_id)
        .bind(hash.as_str())
        .fetch_optional(&mut *c)
        .await?;
        row.map(|r| {
            let store_path: String = r.try_get("store_path")?;
            Ok::<_, DbError>(DeletedObject {
                store_path: store_path.parse().map_err(|e| corrupt("objects.store_path", e))?,
                nar_id: r.try_get("nar_id")?,
            })
        })
        .transpose()
    })
}

/// Records accesses at `at` for objects by id (≤ [`super::chunks::BATCH`]).
pub async fn touch(raw: Raw<'_>, ids: &[ObjectId], at: i64) -> Result<u64, DbError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let marks = (2..ids.len() + 2)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "UPDATE objects SET last_accessed_at = $1 WHERE last_accessed_at < $1 AND id IN ({marks})"
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql)).bind(at);
        for id in ids {
            q = q.bind(*id);
        }
        Ok(q.execute(&mut *c).await?.rows_affected())
    })
}

/// Records accesses at `at` for the objects of `cache_id` that refer to
/// these NARs (≤ [`super::chunks::BATCH`]): a NAR download.
pub async fn touch_by_nar(
    raw: Raw<'_>,
    cache_id: CacheId,
    nar_ids: &[NarId],
    at: i64,
) -> Result<u64, DbError> {
    if nar_ids.is_empty() {
        return Ok(0);
    }
    let marks = (3..nar_ids.len() + 3)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "UPDATE objects SET last_accessed_at = $1 WHERE cache_id = $2 AND last_accessed_at < $1 AND nar_id IN ({marks})"
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql)).bind(at).bind(cache_id);
        for id in nar_ids {
            q = q.bind(*id);
        }
        Ok(q.execute(&mut *c).await?.rows_affected())
    })
}

/// Sets an object's push and access times: an imported path keeps the
/// clocks it had where it came from (retention counts from them).
pub async fn set_times(
    raw: Raw<'_>,
    id: ObjectId,
    created_at: i64,
    last_accessed_at: i64,
) -> Result<(), DbError> {
    on_conn!(raw, c => {
        sqlx::query("UPDATE objects SET created_at = $2, last_accessed_at = $3 WHERE id = $1")
            .bind(id)
            .bind(created_at)
            .bind(last_accessed_at)
            .execute(&mut *c)
            .await?;
        Ok(())
    })
}
