//! Every change of a chunk's reference count, and the protocol they follow
//! (docs/gc.md), stated once:
//!
//! - `refcount` counts the ready NARs whose chunk list names the chunk. A
//!   chunk row is written only when its object is stored, already holding
//!   its first NAR's reference ([`insert_referenced`]); a reused chunk gets
//!   one more ([`add_refs`]) in the transaction that makes the NAR ready.
//! - Deleting a NAR releases its references ([`release_refs`],
//!   [`release_refs_by`]); a chunk reaching 0 records `zero_since`.
//! - GC marks a chunk unreferenced for the grace period `refcount = -1`
//!   ([`mark_deleting`]; `verify --repair` does the same to a damaged one,
//!   [`quarantine_chunks`]), deletes its object, then its row. A deleter
//!   that finds a writer storing the object again puts it back to 0
//!   ([`unmark_chunks`]).
//! - Nothing adds a reference to a chunk at `-1` (`WHERE refcount >= 0`,
//!   and the caller checks the count), so a chunk being deleted is never
//!   reused: its NAR's ingest fails and retries, storing the chunk anew.
//!
//! Every multi-row update first locks its rows in ascending id order on
//! PostgreSQL ([`lock_in_order`]), and callers pass ids ascending across
//! batches, so ingests and GC passes touching the same chunks queue behind
//! each other instead of deadlocking (an `UPDATE … WHERE id IN (…)` alone
//! locks in whatever order its plan visits the rows). SQLite has one writer
//! at a time and needs nothing.

use std::collections::HashMap;

use sqlx::{AssertSqlSafe, Row};

use super::chunks::{BATCH, NewChunk};
use super::{ChunkId, DbError, Raw, corrupt, placeholders};
use crate::chunk::ChunkHash;
use crate::on_conn;

/// Locks the chunk rows `ids` (≤ [`BATCH`]) in ascending id order, in the
/// caller's transaction, on PostgreSQL; a no-op on SQLite. A caller that
/// updates several batches in one transaction calls this for all of them
/// first, in order.
pub async fn lock_in_order(raw: Raw<'_>, ids: &[ChunkId]) -> Result<(), DbError> {
    super::lock_rows_in_order(raw, "chunks", ids).await
}

/// Locks `ids` in order ([`lock_in_order`]), then runs `sql`, whose
/// parameters are `leading` followed by the ids (its `IN` list starts at
/// `$leading.len() + 1`); returns the rows it changed.
async fn update_ids(
    raw: Raw<'_>,
    sql: &str,
    leading: &[i64],
    ids: &[ChunkId],
) -> Result<u64, DbError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut raw = raw;
    lock_in_order(raw.reborrow(), ids).await?;
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for v in leading {
            q = q.bind(*v);
        }
        for id in ids {
            q = q.bind(*id);
        }
        Ok(q.execute(&mut *c).await?.rows_affected())
    })
}

/// Records chunks whose objects are stored (≤ [`BATCH`]) as referenced once
/// (`refcount = 1`), in the transaction that makes their first NAR ready.
/// Returns the ids of the rows inserted; hashes already recorded (a
/// concurrent ingest won) are left out for the caller to reuse.
pub async fn insert_referenced(
    raw: Raw<'_>,
    new: &[NewChunk],
) -> Result<HashMap<ChunkHash, ChunkId>, DbError> {
    debug_assert!(new.len() <= BATCH);
    if new.is_empty() {
        return Ok(HashMap::new());
    }
    let values = (0..new.len())
        .map(|i| {
            let p: Vec<String> = (1..=5).map(|k| format!("${}", 5 * i + k)).collect();
            format!("({}, 1, NULL)", p.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let insert = format!(
        "INSERT INTO chunks (chunk_hash, chunk_size, file_size, pack_id, pack_offset, refcount, zero_since)
         VALUES {values} ON CONFLICT (chunk_hash) DO NOTHING RETURNING id, chunk_hash"
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*insert));
        for n in new {
            q = q
                .bind(&n.hash.as_bytes()[..])
                .bind(n.chunk_size)
                .bind(n.file_size)
                .bind(n.pack.map(|p| p.0))
                .bind(n.pack.map(|p| p.1));
        }
        let rows = q.fetch_all(&mut *c).await?;
        rows.iter()
            .map(|r| {
                let hash: Vec<u8> = r.try_get("chunk_hash")?;
                let hash = ChunkHash::from_slice(&hash).map_err(|e| corrupt("chunks.chunk_hash", e))?;
                Ok((hash, r.try_get::<ChunkId, _>("id")?))
            })
            .collect()
    })
}

/// Adds one reference from a newly ready NAR to each distinct chunk in `ids`
/// (≤ [`BATCH`] per call). Returns how many rows were updated, so the caller
/// can detect a chunk that vanished.
pub async fn add_refs(raw: Raw<'_>, ids: &[ChunkId]) -> Result<u64, DbError> {
    debug_assert!(ids.len() <= BATCH);
    let sql = format!(
        "UPDATE chunks SET refcount = refcount + 1, zero_since = NULL WHERE refcount >= 0 AND id IN ({})",
        placeholders(1, ids.len())
    );
    update_ids(raw, &sql, &[], ids).await
}

/// Adds `times` references to each distinct chunk in `ids` (≤ [`BATCH`]
/// per call): a group commit whose ready NARs share chunks. The caller has
/// locked every row it updates in ascending order first
/// ([`lock_in_order`]), as it calls this once per distinct `times`.
pub async fn add_refs_times(raw: Raw<'_>, times: i64, ids: &[ChunkId]) -> Result<u64, DbError> {
    debug_assert!(ids.len() <= BATCH);
    let sql = format!(
        "UPDATE chunks SET refcount = refcount + $1, zero_since = NULL WHERE refcount >= 0 AND id IN ({})",
        placeholders(2, ids.len())
    );
    update_ids(raw, &sql, &[times], ids).await
}

/// Releases one reference from each distinct chunk in `ids` (≤ [`super::chunks::BATCH`],
/// sorted by the caller); chunks reaching zero record `zero_since = now`.
pub async fn release_refs(raw: Raw<'_>, ids: &[ChunkId], now: i64) -> Result<(), DbError> {
    release_refs_by(raw, ids, 1, now).await
}

/// Releases `count` references from each distinct chunk in `ids` (several
/// deleted NARs listing the same chunk, in one statement).
pub async fn release_refs_by(
    raw: Raw<'_>,
    ids: &[ChunkId],
    count: i64,
    now: i64,
) -> Result<(), DbError> {
    let sql = format!(
        "UPDATE chunks SET refcount = CASE WHEN refcount >= $2 THEN refcount - $2 ELSE 0 END,
             zero_since = CASE WHEN refcount <= $2 THEN $1 ELSE zero_since END
         WHERE refcount > 0 AND id IN ({})",
        placeholders(3, ids.len())
    );
    update_ids(raw, &sql, &[now, count], ids).await.map(drop)
}

/// Marks chunks (≤ [`super::chunks::BATCH`]) as being deleted, if still unreferenced since
/// before `cutoff`. Returns the ids actually marked. (`COALESCE` keeps the
/// planner on the primary key: with statistics stale after a large GC it
/// would otherwise walk the whole `zero_since` index for 100 ids.)
pub async fn mark_deleting(
    raw: Raw<'_>,
    ids: &[ChunkId],
    cutoff: i64,
) -> Result<Vec<ChunkId>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let update = format!(
        "UPDATE chunks SET refcount = -1
         WHERE id IN ({}) AND refcount = 0 AND COALESCE(zero_since, 0) < $1",
        placeholders(2, ids.len())
    );
    let select = format!(
        "SELECT id FROM chunks WHERE refcount < 0 AND id IN ({})",
        placeholders(1, ids.len())
    );
    let mut raw = raw;
    update_ids(raw.reborrow(), &update, &[cutoff], ids).await?;
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*select));
        for id in ids {
            q = q.bind(*id);
        }
        let rows = q.fetch_all(&mut *c).await?;
        rows.iter().map(|r| r.try_get::<ChunkId, _>("id").map_err(DbError::from)).collect()
    })
}

/// Puts chunks marked for deletion (≤ [`super::chunks::BATCH`]) back to
/// unreferenced (`refcount = 0`, `zero_since = now`): a deleter found a
/// writer about to store their objects again, so the objects stay, the
/// writer's commit may reference the rows, and GC looks at them again only
/// after another grace period.
pub async fn unmark_chunks(raw: Raw<'_>, ids: &[ChunkId], now: i64) -> Result<u64, DbError> {
    let sql = format!(
        "UPDATE chunks SET refcount = 0, zero_since = $1 WHERE refcount < 0 AND id IN ({})",
        placeholders(2, ids.len())
    );
    update_ids(raw, &sql, &[now], ids).await
}

/// Quarantines damaged chunks (≤ 100) that no NAR references any more: they
/// are marked as being deleted, so no ingest reuses them and GC removes them.
pub async fn quarantine_chunks(raw: Raw<'_>, ids: &[ChunkId]) -> Result<u64, DbError> {
    let sql = format!(
        "UPDATE chunks SET refcount = -1 WHERE refcount = 0 AND id IN ({})",
        placeholders(1, ids.len())
    );
    update_ids(raw, &sql, &[], ids).await
}
