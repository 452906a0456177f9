//! `nars`: one row per distinct NAR, shared by every cache that holds it.
//!
//! State moves only by guarded updates (`… WHERE state = 'staged'`), so a job
//! that runs twice, or after a crash, finds nothing left to do.

use sqlx::{AssertSqlSafe, Row};

use super::nar_layout::{NarLayout, encode_spans};
use super::{ChunkId, DbError, NarId, Raw, corrupt};
use crate::on_conn;
use larder_core::nix::hash::NarHash;

/// Where a NAR is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NarState {
    /// Uncompressed in staging, waiting for a worker; already served.
    Staged,
    /// Chunked, compressed and stored; `chunk_list` is live.
    Ready,
    /// `verify` found missing or corrupt chunks; not served.
    Broken,
}

impl NarState {
    /// The value stored in `nars.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            NarState::Staged => "staged",
            NarState::Ready => "ready",
            NarState::Broken => "broken",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, DbError> {
        match s {
            "staged" => Ok(NarState::Staged),
            "ready" => Ok(NarState::Ready),
            "broken" => Ok(NarState::Broken),
            other => Err(corrupt("nars.state", format!("unknown state {other:?}"))),
        }
    }
}

/// A NAR as stored.
#[derive(Debug, Clone)]
pub struct NarRecord {
    /// Row id.
    pub id: NarId,
    /// SHA-256 of the uncompressed NAR.
    pub nar_hash: NarHash,
    /// Uncompressed size.
    pub nar_size: i64,
    /// Life-cycle state.
    pub state: NarState,
    /// Storage key of the staged copy while `Staged`.
    pub staging_key: Option<crate::storage::ObjectKey>,
    /// The staged copy's checksum, recorded by the upload that verified it;
    /// `None` for copies staged before migration 0017 (their ingest checks
    /// the NarHash instead).
    pub staged_checksum: Option<crate::storage::checksum::Checksum>,
    /// Chunk ids in NAR order, once `Ready`.
    pub chunk_ids: Vec<ChunkId>,
    /// Total compressed size, once `Ready`.
    pub file_size: Option<i64>,
    /// Chunk sizes and `.nar.zst` digest, once `Ready`; `None` for NARs
    /// ingested before migration 0007 until a download backfills it, and
    /// while stale (computed before the current [`Self::epoch`]).
    pub layout: Option<NarLayout>,
    /// The layout epoch current when the row was read
    /// ([`super::layout_epoch`]): what a layout computed from chunk rows
    /// read after it is stored with.
    pub epoch: i64,
    /// First upload.
    pub created_at: i64,
}

const COLUMNS: &str = "id, nar_hash, nar_size, state, staging_key, staged_checksum, chunk_list, file_size, \
     chunk_sizes, frames_digest, created_at, layout_epoch, \
     (SELECT epoch FROM layout_epoch WHERE id = 1) AS epoch_now";

/// Encodes chunk ids as 8 bytes big-endian each: 8 B per chunk per NAR.
pub fn encode_chunk_list(ids: &[ChunkId]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.get().to_be_bytes()).collect()
}

/// Inverse of [`encode_chunk_list`].
pub fn decode_chunk_list(bytes: &[u8]) -> Result<Vec<ChunkId>, DbError> {
    if !bytes.len().is_multiple_of(8) {
        return Err(corrupt("nars.chunk_list", "length is not a multiple of 8"));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            ChunkId(i64::from_be_bytes(a))
        })
        .collect())
}

macro_rules! nar_from_row {
    ($r:expr) => {{
        let r = $r;
        let hash: Vec<u8> = r.try_get("nar_hash")?;
        let state: String = r.try_get("state")?;
        let list: Option<Vec<u8>> = r.try_get("chunk_list")?;
        let sizes: Option<Vec<u8>> = r.try_get("chunk_sizes")?;
        let digest: Option<Vec<u8>> = r.try_get("frames_digest")?;
        let chunk_ids = list
            .as_deref()
            .map($crate::db::nars::decode_chunk_list)
            .transpose()?
            .unwrap_or_default();
        let epoch: i64 = r.try_get("epoch_now")?;
        let current = r.try_get::<i64, _>("layout_epoch")? >= epoch;
        let layout =
            $crate::db::nar_layout::decode(sizes.as_deref(), digest.as_deref(), chunk_ids.len())?
                .filter(|_| current);
        Ok::<_, $crate::db::DbError>($crate::db::nars::NarRecord {
            id: r.try_get("id")?,
            nar_hash: ::larder_core::nix::hash::NarHash::from_slice(&hash)
                .map_err(|e| $crate::db::corrupt("nars.nar_hash", e))?,
            nar_size: r.try_get("nar_size")?,
            state: $crate::db::nars::NarState::parse(&state)?,
            staging_key: $crate::db::key_column("nars.staging_key", r.try_get("staging_key")?)?,
            staged_checksum: r
                .try_get::<Option<i64>, _>("staged_checksum")?
                .map($crate::storage::checksum::Checksum::from_db),
            chunk_ids,
            file_size: r.try_get("file_size")?,
            layout,
            epoch,
            created_at: r.try_get("created_at")?,
        })
    }};
}
pub(crate) use nar_from_row;

/// Finds a NAR by hash, whatever its state.
pub async fn find_by_hash(raw: Raw<'_>, hash: &NarHash) -> Result<Option<NarRecord>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM nars WHERE nar_hash = $1");
    on_conn!(raw, c => {
        let row = sqlx::query(AssertSqlSafe(&*sql)).bind(&hash.as_bytes()[..]).fetch_optional(&mut *c).await?;
        row.map(|r| nar_from_row!(&r)).transpose()
    })
}

/// Loads a NAR by id.
pub async fn get(raw: Raw<'_>, id: NarId) -> Result<Option<NarRecord>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM nars WHERE id = $1");
    on_conn!(raw, c => {
        let row = sqlx::query(AssertSqlSafe(&*sql)).bind(id).fetch_optional(&mut *c).await?;
        row.map(|r| nar_from_row!(&r)).transpose()
    })
}

/// Records a freshly staged NAR. `None` when another upload of the same NAR
/// won the race: the caller deletes its own staged copy and links the winner.
pub async fn insert_staged(
    raw: Raw<'_>,
    hash: &NarHash,
    nar_size: i64,
    staging_key: &str,
    now: i64,
) -> Result<Option<NarId>, DbError> {
    on_conn!(raw, c => {
        let row = sqlx::query(
            "INSERT INTO nars (nar_hash, nar_size, state, staging_key, staged_checksum,
                 staged_chunks, created_at, updated_at)
             VALUES ($1, $2, 'staged', $3,
                 (SELECT staged_checksum FROM staging_intents WHERE object_key = $3),
                 (SELECT staged_chunks FROM staging_intents WHERE object_key = $3), $4, $4)
             ON CONFLICT (nar_hash) DO NOTHING RETURNING id",
        )
        .bind(&hash.as_bytes()[..])
        .bind(nar_size)
        .bind(staging_key)
        .bind(now)
        .fetch_optional(&mut *c)
        .await?;
        row.map(|r| r.try_get::<NarId, _>("id")).transpose().map_err(DbError::from)
    })
}

/// Locks the NAR's row for the caller's transaction on PostgreSQL (a no-op
/// on SQLite, which has one writer at a time). An ingest's commit takes it
/// first, as GC's deletion of orphan NARs does, so the two lock NAR then
/// chunk rows in the same order (docs/gc.md).
pub async fn lock(raw: Raw<'_>, id: NarId) -> Result<(), DbError> {
    let Raw::Postgres(c) = raw else {
        return Ok(());
    };
    sqlx::query("SELECT id FROM nars WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *c)
        .await?;
    Ok(())
}

/// [`lock`] for several NARs, in ascending id order (a group commit of
/// several ingests takes them all before any chunk row).
pub async fn lock_many(raw: Raw<'_>, ids: &[NarId]) -> Result<(), DbError> {
    super::lock_rows_in_order(raw, "nars", ids).await
}

/// Makes an ingested NAR live, with its `layout` (same order as
/// `chunk_ids`), computed at layout `epoch`. Guarded: returns false (and
/// changes nothing) unless the NAR is still staged, so a second run of the
/// job is a no-op.
pub async fn mark_ready(
    raw: Raw<'_>,
    id: NarId,
    chunk_ids: &[ChunkId],
    (layout, epoch): (&NarLayout, i64),
    file_size: i64,
    now: i64,
) -> Result<bool, DbError> {
    let list = encode_chunk_list(chunk_ids);
    let sizes = encode_spans(&layout.spans);
    on_conn!(raw, c => {
        let done = sqlx::query(
            "UPDATE nars SET state = 'ready', chunk_list = $2, num_chunks = $3, file_size = $4,
                 chunk_sizes = $5, frames_digest = $6, staging_key = NULL, staged_checksum = NULL,
                 staged_chunks = NULL, updated_at = $7,
                 layout_epoch = $8
             WHERE id = $1 AND state = 'staged'",
        )
        .bind(id)
        .bind(&list)
        .bind(chunk_ids.len() as i64)
        .bind(file_size)
        .bind(&sizes)
        .bind(&layout.frames_digest[..])
        .bind(now)
        .bind(epoch)
        .execute(&mut *c)
        .await?;
        Ok(done.rows_affected() == 1)
    })
}

/// Stores the layout a download computed from chunk rows read after layout
/// `epoch` began: a NAR ingested before migration 0007, or one whose layout
/// a recompression made stale (its `file_size` with it). Guarded by the
/// chunk list it was computed from, so a NAR re-ingested meanwhile keeps
/// its own, and by the epoch, so a newer layout is never replaced.
pub async fn store_layout(
    raw: Raw<'_>,
    id: NarId,
    chunk_ids: &[ChunkId],
    (layout, epoch): (&NarLayout, i64),
) -> Result<bool, DbError> {
    let list = encode_chunk_list(chunk_ids);
    let sizes = encode_spans(&layout.spans);
    let file_size: i64 = layout.spans.iter().map(|s| i64::from(s.file_size)).sum();
    on_conn!(raw, c => {
        let done = sqlx::query(
            "UPDATE nars SET chunk_sizes = $2, frames_digest = $3, layout_epoch = $5,
                 file_size = $6
             WHERE id = $1 AND state = 'ready' AND chunk_list = $4
               AND (chunk_sizes IS NULL OR layout_epoch < $5)",
        )
        .bind(id)
        .bind(&sizes)
        .bind(&layout.frames_digest[..])
        .bind(&list)
        .bind(epoch)
        .bind(file_size)
        .execute(&mut *c)
        .await?;
        Ok(done.rows_affected() == 1)
    })
}

/// Gives a broken NAR a fresh staged copy (a re-upload repairs it).
/// Guarded: false unless the NAR is broken.
pub async fn restage(
    raw: Raw<'_>,
    id: NarId,
    staging_key: &str,
    now: i64,
) -> Result<bool, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query(
            "UPDATE nars SET state = 'staged', staging_key = $2, chunk_list = NULL, num_chunks = NULL,
                 staged_checksum =
                     (SELECT staged_checksum FROM staging_intents WHERE object_key = $2),
                 staged_chunks =
                     (SELECT staged_chunks FROM staging_intents WHERE object_key = $2),
                 file_size = NULL, chunk_sizes = NULL, frames_digest = NULL, updated_at = $3
             WHERE id = $1 AND state = 'broken'",
        )
        .bind(id)
        .bind(staging_key)
        .bind(now)
        .execute(&mut *c)
        .await?;
        Ok(done.rows_affected() == 1)
    })
}

/// Staged NARs not touched since `before`: their job may have been lost.
pub async fn stale_staged(
    raw: Raw<'_>,
    before: i64,
    limit: i64,
) -> Result<Vec<crate::jobs::StagedNar>, DbError> {
    on_conn!(raw, c => {
        let rows = sqlx::query(
            "SELECT id, nar_size FROM nars WHERE state = 'staged' AND updated_at < $1 ORDER BY updated_at LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *c)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(crate::jobs::StagedNar {
                    nar_id: r.try_get("id")?,
                    nar_size: r.try_get::<i64, _>("nar_size")?.max(0) as u64,
                })
            })
            .collect::<Result<_, DbError>>()
    })
}

/// The ingest backlog: NARs staged and not yet ingested.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StagedTotals {
    /// Staged NARs.
    pub nars: i64,
    /// Their uncompressed bytes (what staging holds for them).
    pub bytes: i64,
    /// `created_at` of the oldest: its age is the ingest lag. A broken NAR
    /// restaged by a re-upload keeps its first upload's time, so it counts
    /// as old until ingested (rare, and ingested at once).
    pub oldest_created_at: Option<i64>,
}

/// Totals of the staged NARs: what the staging quota and the `/metrics`
/// backlog gauges read. `state <> 'ready'` restates the partial index
/// `nars_unfinished_idx`'s predicate so PostgreSQL reads only unfinished
/// rows, however many NARs are ready.
pub async fn staged_totals(raw: Raw<'_>) -> Result<StagedTotals, DbError> {
    on_conn!(raw, c => {
        let row = sqlx::query(
            "SELECT COUNT(*) AS nars, CAST(COALESCE(SUM(nar_size), 0) AS BIGINT) AS bytes,
                    MIN(created_at) AS oldest
             FROM nars WHERE state <> 'ready' AND state = 'staged'",
        )
        .fetch_one(&mut *c)
        .await?;
        Ok(StagedTotals {
            nars: row.try_get("nars")?,
            bytes: row.try_get("bytes")?,
            oldest_created_at: row.try_get("oldest")?,
        })
    })
}

/// Marks a NAR as in use now: a staged NAR (re-)enqueued or being ingested,
/// so the sweeper leaves it alone; any NAR about to be linked by an upload,
/// so GC (which deletes only orphans untouched for the grace period) cannot
/// delete it meanwhile. Returns false if the NAR is gone.
pub async fn touch(raw: Raw<'_>, id: NarId, now: i64) -> Result<bool, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query("UPDATE nars SET updated_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&mut *c)
            .await?;
        Ok(done.rows_affected() == 1)
    })
}

/// Whether a `nars` row names this staging key (what the sweeper checks
/// before deleting the object of a staging intent).
pub async fn staging_key_exists(raw: Raw<'_>, key: &str) -> Result<bool, DbError> {
    on_conn!(raw, c => {
        let row = sqlx::query("SELECT 1 AS one FROM nars WHERE staging_key = $1 LIMIT 1")
            .bind(key)
            .fetch_optional(&mut *c)
            .await?;
        Ok(row.is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_list_round_trip() {
        let ids: Vec<ChunkId> = [1, 2, i64::MAX, 42].into_iter().map(ChunkId).collect();
        let bytes = encode_chunk_list(&ids);
        assert_eq!(bytes.len(), 32);
        // Byte-identical to the encoding of the bare numbers.
        let raw: Vec<u8> = [1i64, 2, i64::MAX, 42]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        assert_eq!(bytes, raw);
        assert_eq!(decode_chunk_list(&bytes).unwrap(), ids);
        assert!(decode_chunk_list(&bytes[..7]).is_err());
    }
}
