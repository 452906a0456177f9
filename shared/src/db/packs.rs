//! `packs` and `pack_ids`: chunk packs and their live bytes
//! (docs/architecture.md "Packs", docs/gc.md "Packs").
//!
//! A pack gets its row in the first transaction that makes a chunk in it
//! live; its `live_chunks`/`live_bytes` change only in the transactions
//! that insert, delete or move the chunk rows located in it, so they cannot
//! drift by a crash. Rows are changed in ascending id order, after chunk
//! rows (the lock order of docs/gc.md).

use std::collections::{BTreeMap, HashSet};

use sqlx::{AssertSqlSafe, Row};

use super::{DbError, Raw, placeholders};
use crate::on_conn;

/// A new pack id, never handed out before (cluster-wide).
pub async fn next_id(raw: Raw<'_>, now: i64) -> Result<i64, DbError> {
    on_conn!(raw, c => {
        let row = sqlx::query("INSERT INTO pack_ids (created_at) VALUES ($1) RETURNING id")
            .bind(now)
            .fetch_one(&mut *c)
            .await?;
        Ok(row.try_get::<i64, _>("id")?)
    })
}

/// Live chunks and bytes a transaction adds to (or, negative, takes from)
/// one pack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveDelta {
    /// Chunk rows.
    pub chunks: i64,
    /// Their stored bytes.
    pub bytes: i64,
}

/// Sums per-chunk deltas by pack, in ascending pack order.
pub fn by_pack(items: impl IntoIterator<Item = (i64, i64)>) -> BTreeMap<i64, LiveDelta> {
    let mut out: BTreeMap<i64, LiveDelta> = BTreeMap::new();
    for (pack, bytes) in items {
        let d = out.entry(pack).or_default();
        d.chunks += 1;
        d.bytes += bytes;
    }
    out
}

/// Records a sealed pack (if this is its first commit) and adds `delta` to
/// its live counts, in the transaction that inserts the chunk rows.
pub async fn add_live(
    raw: Raw<'_>,
    (id, size, chunks): (i64, u64, u64),
    level: i32,
    delta: LiveDelta,
    now: i64,
) -> Result<(), DbError> {
    on_conn!(raw, c => {
        sqlx::query(
            "INSERT INTO packs (id, size, chunks, live_chunks, live_bytes, created_at, level)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET
                 live_chunks = packs.live_chunks + excluded.live_chunks,
                 live_bytes = packs.live_bytes + excluded.live_bytes",
        )
        .bind(id)
        .bind(size as i64)
        .bind(chunks as i64)
        .bind(delta.chunks)
        .bind(delta.bytes)
        .bind(now)
        .bind(level)
        .execute(&mut *c)
        .await?;
        Ok(())
    })
}

/// Takes deleted or moved chunk rows off their packs' live counts, in the
/// transaction that deletes or moves them (ascending pack order).
pub async fn remove_live(
    mut raw: Raw<'_>,
    deltas: &BTreeMap<i64, LiveDelta>,
) -> Result<(), DbError> {
    for (id, d) in deltas {
        on_conn!(raw.reborrow(), c => {
            sqlx::query(
                "UPDATE packs SET live_chunks = live_chunks - $2, live_bytes = live_bytes - $3
                 WHERE id = $1",
            )
            .bind(*id)
            .bind(d.chunks)
            .bind(d.bytes)
            .execute(&mut *c)
            .await?;
        });
    }
    Ok(())
}

/// Packs with no live chunk left (after `after`, by id), with their sizes:
/// their objects are garbage once the deletion protocol agrees. A pack
/// compaction emptied counts only once it was retired before
/// `retired_before`, so a download that resolved a chunk's old location a
/// moment earlier still finds it; likewise a pack holding a frame
/// recompressed since then ([`super::replaced_frames`]).
pub async fn empty(
    raw: Raw<'_>,
    after: i64,
    retired_before: i64,
    limit: i64,
) -> Result<Vec<(i64, u64)>, DbError> {
    on_conn!(raw, c => {
        let rows = sqlx::query(
            "SELECT id, size FROM packs
             WHERE live_chunks <= 0 AND id > $1 AND (retired_at IS NULL OR retired_at < $2)
               AND NOT EXISTS (SELECT 1 FROM replaced_frames f
                               WHERE f.pack_id = packs.id AND f.replaced_at >= $2)
             ORDER BY id LIMIT $3",
        )
        .bind(after)
        .bind(retired_before)
        .bind(limit)
        .fetch_all(&mut *c)
        .await?;
        rows.iter()
            .map(|r| {
                let size: i64 = r.try_get("size")?;
                Ok((r.try_get::<i64, _>("id")?, size.max(0) as u64))
            })
            .collect()
    })
}

/// A pack as compaction weighs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackUse {
    /// Pack id.
    pub id: i64,
    /// Object bytes.
    pub size: i64,
    /// Live chunk rows located in it.
    pub live_chunks: i64,
    /// Their stored bytes.
    pub live_bytes: i64,
    /// When it was written.
    pub created_at: i64,
    /// zstd level of its frames; `None` for packs written before migration
    /// 0013 (at the ingest level).
    pub level: Option<i32>,
}

/// Columns a [`PackUse`] is read from.
const USE_COLUMNS: &str = "id, size, live_chunks, live_bytes, created_at, level";

macro_rules! pack_uses {
    ($rows:expr) => {
        $rows
            .iter()
            .map(|r| {
                Ok(PackUse {
                    id: r.try_get("id")?,
                    size: r.try_get("size")?,
                    live_chunks: r.try_get("live_chunks")?,
                    live_bytes: r.try_get("live_bytes")?,
                    created_at: r.try_get("created_at")?,
                    level: r.try_get::<Option<i16>, _>("level")?.map(i32::from),
                })
            })
            .collect()
    };
}

/// Packs worth rewriting, oldest first: created before `created_before`,
/// not retired, still holding live chunks, and either less than
/// `threshold` live or smaller than `small_below` bytes.
pub async fn compaction_candidates(
    raw: Raw<'_>,
    threshold: f64,
    small_below: i64,
    created_before: i64,
    limit: i64,
) -> Result<Vec<PackUse>, DbError> {
    let sql = format!(
        "SELECT {USE_COLUMNS} FROM packs
         WHERE retired_at IS NULL AND live_chunks > 0 AND created_at < $1
           AND (CAST(live_bytes AS DOUBLE PRECISION) < CAST(size AS DOUBLE PRECISION) * $2 OR size < $3)
         ORDER BY id LIMIT $4"
    );
    on_conn!(raw, c => {
        let rows = sqlx::query(AssertSqlSafe(&*sql))
            .bind(created_before)
            .bind(threshold)
            .bind(small_below)
            .bind(limit)
            .fetch_all(&mut *c)
            .await?;
        pack_uses!(rows)
    })
}

/// Cold packs to recompress, oldest first: written before
/// `created_before`, not retired, holding live chunks, at a level below
/// `level` (packs from before migration 0013 count as below).
pub async fn recompression_candidates(
    raw: Raw<'_>,
    level: i32,
    created_before: i64,
    limit: i64,
) -> Result<Vec<PackUse>, DbError> {
    let sql = format!(
        "SELECT {USE_COLUMNS} FROM packs
         WHERE retired_at IS NULL AND live_chunks > 0 AND created_at < $1
           AND COALESCE(level, 0) < $2
         ORDER BY id LIMIT $3"
    );
    on_conn!(raw, c => {
        let rows = sqlx::query(AssertSqlSafe(&*sql))
            .bind(created_before)
            .bind(level)
            .bind(limit)
            .fetch_all(&mut *c)
            .await?;
        pack_uses!(rows)
    })
}

/// Moves a chunk row's location from `from` (a pack, or `None` for its own
/// object) to `(to, offset)` with stored size `file_size` (changed only by
/// recompression), if it is still there (a row GC deleted
/// meanwhile is not moved). Returns whether it moved.
pub async fn move_chunk(
    raw: Raw<'_>,
    id: super::ChunkId,
    from: Option<i64>,
    (to, offset, file_size): (i64, i64, i32),
) -> Result<bool, DbError> {
    let still_there = match from {
        Some(_) => "pack_id = $5",
        None => "pack_id IS NULL",
    };
    let sql = format!(
        "UPDATE chunks SET pack_id = $2, pack_offset = $3, file_size = $4 WHERE id = $1 AND {still_there}"
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql))
            .bind(id)
            .bind(to)
            .bind(offset)
            .bind(file_size);
        if let Some(from) = from {
            q = q.bind(from);
        }
        Ok(q.execute(&mut *c).await?.rows_affected() == 1)
    })
}

/// Marks packs a move emptied as retired at `now` (deleted a grace
/// period later, see [`empty`]).
pub async fn retire(raw: Raw<'_>, ids: &[i64], now: i64) -> Result<u64, DbError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "UPDATE packs SET retired_at = $1
         WHERE live_chunks <= 0 AND retired_at IS NULL AND id IN ({})",
        placeholders(2, ids.len())
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql)).bind(now);
        for id in ids {
            q = q.bind(*id);
        }
        Ok(q.execute(&mut *c).await?.rows_affected())
    })
}

/// Which of `ids` (≤ [`super::chunks::BATCH`]) some chunk row still
/// locates a frame in: a deleter keeps those.
pub async fn named_by_chunks(raw: Raw<'_>, ids: &[i64]) -> Result<HashSet<i64>, DbError> {
    ids_found(
        raw,
        "SELECT DISTINCT pack_id AS id FROM chunks WHERE pack_id",
        ids,
    )
    .await
}

/// Which of `ids` (≤ [`super::chunks::BATCH`]) have a row.
pub async fn existing(raw: Raw<'_>, ids: &[i64]) -> Result<HashSet<i64>, DbError> {
    ids_found(raw, "SELECT id FROM packs WHERE id", ids).await
}

/// The `id` column of `select … IN (ids)` (`select` ends with the column
/// the list applies to).
async fn ids_found(raw: Raw<'_>, select: &str, ids: &[i64]) -> Result<HashSet<i64>, DbError> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let sql = format!("{select} IN ({})", placeholders(1, ids.len()));
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql));
        for id in ids {
            q = q.bind(*id);
        }
        let rows = q.fetch_all(&mut *c).await?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>("id").map_err(DbError::from))
            .collect()
    })
}

/// Deletes the rows of packs whose objects were deleted.
pub async fn delete(raw: Raw<'_>, ids: &[i64]) -> Result<u64, DbError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "DELETE FROM packs WHERE id IN ({})",
        placeholders(1, ids.len())
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql));
        for id in ids {
            q = q.bind(*id);
        }
        Ok(q.execute(&mut *c).await?.rows_affected())
    })
}

/// Totals over every pack: what `/metrics` reports cluster-wide, so
/// compaction and recompression progress shows as backlogs shrinking.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PackTotals {
    /// Packs.
    pub packs: i64,
    /// Their object bytes.
    pub bytes: i64,
    /// Bytes of live chunks in them (the rest is dead space: the
    /// compaction backlog).
    pub live_bytes: i64,
    /// Packs compaction emptied, awaiting deletion after the grace period.
    pub retired: i64,
    /// Live packs below the archive level written before the cutoff: the
    /// recompression backlog, and their bytes.
    pub cold_packs: i64,
    /// Bytes of those.
    pub cold_bytes: i64,
}

/// [`PackTotals`] now; cold means below `archive_level`, written before
/// `cold_before` (nothing is cold when `archive_level` is `None`).
pub async fn totals(
    raw: Raw<'_>,
    archive_level: Option<i32>,
    cold_before: i64,
) -> Result<PackTotals, DbError> {
    on_conn!(raw, c => {
        let r = sqlx::query(
            "SELECT COUNT(*) AS packs,
                    CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes,
                    CAST(COALESCE(SUM(live_bytes), 0) AS BIGINT) AS live_bytes,
                    COUNT(retired_at) AS retired,
                    COALESCE(SUM(CASE WHEN cold THEN 1 ELSE 0 END), 0) AS cold_packs,
                    CAST(COALESCE(SUM(CASE WHEN cold THEN size ELSE 0 END), 0) AS BIGINT) AS cold_bytes
             FROM (SELECT *, (retired_at IS NULL AND live_chunks > 0 AND created_at < $1
                              AND COALESCE(level, 0) < $2) AS cold FROM packs) p",
        )
        .bind(cold_before)
        .bind(archive_level.unwrap_or(0))
        .fetch_one(&mut *c)
        .await?;
        Ok(PackTotals {
            packs: r.try_get("packs")?,
            bytes: r.try_get("bytes")?,
            live_bytes: r.try_get("live_bytes")?,
            retired: r.try_get("retired")?,
            cold_packs: r.try_get("cold_packs")?,
            cold_bytes: r.try_get("cold_bytes")?,
        })
    })
}
