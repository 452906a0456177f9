//! Queries of `larder-admin verify`: paging through every chunk and NAR, and
//! quarantining damaged ones.

use sqlx::{AssertSqlSafe, Row};

use super::chunks::{ChunkRecord, chunk_from_row};
use super::nars::decode_chunk_list;
use super::{ChunkId, DbError, NarId, Raw, placeholders};
use crate::on_conn;

/// Live chunks with id above `after`, at most `limit`, by id.
pub async fn chunk_page(
    raw: Raw<'_>,
    after: ChunkId,
    limit: i64,
) -> Result<Vec<ChunkRecord>, DbError> {
    on_conn!(raw, c => {
        let rows = sqlx::query(
            "SELECT id, chunk_hash, chunk_size, file_size, pack_id, pack_offset, refcount FROM chunks
             WHERE id > $1 AND refcount >= 0 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *c)
        .await?;
        rows.iter().map(|r| chunk_from_row!(r)).collect()
    })
}

/// Ready NARs with id above `after`: (id, chunk ids), at most `limit`.
pub async fn ready_nar_page(
    raw: Raw<'_>,
    after: NarId,
    limit: i64,
) -> Result<Vec<(NarId, Vec<ChunkId>)>, DbError> {
    on_conn!(raw, c => {
        let rows = sqlx::query(
            "SELECT id, chunk_list FROM nars WHERE id > $1 AND state = 'ready' ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *c)
        .await?;
        rows.iter()
            .map(|r| {
                let list: Option<Vec<u8>> = r.try_get("chunk_list")?;
                Ok((
                    r.try_get::<NarId, _>("id")?,
                    list.as_deref().map(decode_chunk_list).transpose()?.unwrap_or_default(),
                ))
            })
            .collect()
    })
}

/// Marks a ready NAR broken (no longer served; a re-upload repairs it) and
/// drops its chunk list. The caller releases its chunk references in the
/// same transaction. Guarded: false unless it was ready.
pub async fn mark_broken(raw: Raw<'_>, id: NarId, now: i64) -> Result<bool, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query(
            "UPDATE nars SET state = 'broken', chunk_list = NULL, num_chunks = NULL, file_size = NULL, chunk_sizes = NULL,
                 frames_digest = NULL, updated_at = $2
             WHERE id = $1 AND state = 'ready'",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *c)
        .await?;
        Ok(done.rows_affected() == 1)
    })
}

/// (cache name, store path) of every object referring to these NARs (≤ 100).
pub async fn paths_of_nars(
    raw: Raw<'_>,
    nar_ids: &[NarId],
) -> Result<Vec<(String, String)>, DbError> {
    if nar_ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT c.name, o.store_path FROM objects o JOIN caches c ON c.id = o.cache_id
         WHERE o.nar_id IN ({}) ORDER BY c.name, o.store_path",
        placeholders(1, nar_ids.len())
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql));
        for id in nar_ids {
            q = q.bind(*id);
        }
        let rows = q.fetch_all(&mut *c).await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>("name")?, r.try_get::<String, _>("store_path")?)))
            .collect()
    })
}
