//! Queries of chunk deletion (docs/gc.md, "Why a chunk being deleted is
//! never reused"): which chunks are unreferenced past the grace period or
//! left marked by a dead deleter, and the deletion of marked rows. Marking
//! and unmarking change reference counts, so they are in
//! [`super::refcounts`]. Each query is bounded by [`super::chunks::BATCH`]
//! binds or a `LIMIT`.

use sqlx::{AssertSqlSafe, Row};

use super::chunks::ChunkRecord;
use super::chunks::{COLUMNS as CHUNK_COLUMNS, chunk_from_row};
use super::{ChunkId, DbError, Raw, placeholders};
use crate::on_conn;

fn chunk_query(filter: &str) -> String {
    format!("SELECT {CHUNK_COLUMNS} FROM chunks WHERE {filter} ORDER BY id LIMIT $1")
}

macro_rules! chunks_from_rows {
    ($rows:expr) => {{
        $rows
            .iter()
            .map(|r| chunk_from_row!(r))
            .collect::<Result<Vec<_>, DbError>>()
    }};
}

/// Chunks marked for deletion by a GC that did not finish (crash).
pub async fn deleting_chunks(raw: Raw<'_>, limit: i64) -> Result<Vec<ChunkRecord>, DbError> {
    let sql = chunk_query("zero_since IS NOT NULL AND refcount < 0");
    on_conn!(raw, c => {
        let rows = sqlx::query(AssertSqlSafe(&*sql)).bind(limit).fetch_all(&mut *c).await?;
        chunks_from_rows!(rows)
    })
}

/// Chunks unreferenced since before `cutoff`.
pub async fn unreferenced_chunks(
    raw: Raw<'_>,
    cutoff: i64,
    limit: i64,
) -> Result<Vec<ChunkRecord>, DbError> {
    let sql = format!(
        "SELECT {CHUNK_COLUMNS} FROM chunks WHERE zero_since IS NOT NULL AND zero_since < $2 AND refcount = 0
         ORDER BY zero_since LIMIT $1"
    );
    on_conn!(raw, c => {
        let rows = sqlx::query(AssertSqlSafe(&*sql)).bind(limit).bind(cutoff).fetch_all(&mut *c).await?;
        chunks_from_rows!(rows)
    })
}

/// Deletes rows of chunks marked as being deleted (≤ [`super::chunks::BATCH`]).
pub async fn delete_marked_chunks(raw: Raw<'_>, ids: &[ChunkId]) -> Result<u64, DbError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "DELETE FROM chunks WHERE refcount < 0 AND id IN ({})",
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

/// Deletes rows of marked chunks stored in packs (≤
/// [`super::chunks::BATCH`]); returns each deleted row's `(pack, stored
/// bytes)`, what its pack's live counts lose in the same transaction.
pub async fn delete_marked_packed(
    raw: Raw<'_>,
    ids: &[ChunkId],
) -> Result<Vec<(i64, i64)>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "DELETE FROM chunks WHERE refcount < 0 AND pack_id IS NOT NULL AND id IN ({})
         RETURNING pack_id, file_size",
        placeholders(1, ids.len())
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql));
        for id in ids {
            q = q.bind(*id);
        }
        let rows = q.fetch_all(&mut *c).await?;
        rows.iter()
            .map(|r| {
                let pack: i64 = r.try_get("pack_id")?;
                let size: i32 = r.try_get("file_size")?;
                Ok((pack, i64::from(size)))
            })
            .collect()
    })
}
