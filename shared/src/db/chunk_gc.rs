//! Queries of chunk deletion (docs/gc.md, "Why a chunk being deleted is
//! never reused"): chunks at `refcount = 0` past the grace period are
//! marked `refcount = -1`, their objects deleted, then their rows; a chunk
//! a writer stores again is unmarked instead. Each query is bounded by
//! [`super::chunks::BATCH`] binds or a `LIMIT`.

use sqlx::{AssertSqlSafe, Row};

use super::chunks::ChunkRecord;
use super::chunks::{COLUMNS as CHUNK_COLUMNS, chunk_from_row};
use super::{DbError, Raw, placeholders};
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

/// Marks chunks (≤ [`super::chunks::BATCH`]) as being deleted, if still unreferenced since
/// before `cutoff`. Returns the ids actually marked. (`COALESCE` keeps the
/// planner on the primary key: with statistics stale after a large GC it
/// would otherwise walk the whole `zero_since` index for 100 ids.)
pub async fn mark_deleting(raw: Raw<'_>, ids: &[i64], cutoff: i64) -> Result<Vec<i64>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let marks = placeholders(2, ids.len());
    let update = format!(
        "UPDATE chunks SET refcount = -1
         WHERE id IN ({marks}) AND refcount = 0 AND COALESCE(zero_since, 0) < $1"
    );
    let select = format!(
        "SELECT id FROM chunks WHERE refcount < 0 AND id IN ({})",
        placeholders(1, ids.len())
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*update)).bind(cutoff);
        for id in ids {
            q = q.bind(*id);
        }
        q.execute(&mut *c).await?;
        let mut q = sqlx::query(AssertSqlSafe(&*select));
        for id in ids {
            q = q.bind(*id);
        }
        let rows = q.fetch_all(&mut *c).await?;
        rows.iter().map(|r| r.try_get::<i64, _>("id").map_err(DbError::from)).collect()
    })
}

/// Deletes rows of chunks marked as being deleted (≤ [`super::chunks::BATCH`]).
pub async fn delete_marked_chunks(raw: Raw<'_>, ids: &[i64]) -> Result<u64, DbError> {
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

/// Puts chunks marked for deletion (≤ [`super::chunks::BATCH`]) back to
/// unreferenced (`refcount = 0`, `zero_since = now`): a deleter found a
/// writer about to store their objects again, so the objects stay, the
/// writer's commit may reference the rows, and GC looks at them again only
/// after another grace period.
pub async fn unmark_chunks(raw: Raw<'_>, ids: &[i64], now: i64) -> Result<u64, DbError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "UPDATE chunks SET refcount = 0, zero_since = $1 WHERE refcount < 0 AND id IN ({})",
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
