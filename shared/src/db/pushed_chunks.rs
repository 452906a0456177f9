//! `pushed_chunks`: frames sent by chunk-level push, waiting to be used by a
//! commit (docs/protocol.md "Chunk-level push"). Each row locates one
//! verified zstd frame inside a batch object in staging storage.
//!
//! A row counts only for its `(cache, pusher)`: what a push may take as
//! already sent is what the same pusher sent to the same cache, so no
//! caller learns what anybody else uploaded. Rows of one object are
//! inserted together (one `created_at`) and deleted together when they
//! expire ([`take_expired`]), in the transaction that hands the object to a
//! staging intent for deletion.

use std::collections::HashMap;

use sqlx::{AssertSqlSafe, Row};

use super::chunks::BATCH;
use super::{CacheId, DbError, Raw, corrupt, key_column, placeholders, staging_intents};
use crate::chunk::ChunkHash;
use crate::on_conn;
use crate::storage::ObjectKey;

/// Where a pushed chunk's frame is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedChunk {
    /// The chunk.
    pub hash: ChunkHash,
    /// Batch object in staging storage.
    pub object_key: ObjectKey,
    /// Offset of the frame in it.
    pub frame_offset: u64,
    /// Length of the frame.
    pub frame_len: u64,
    /// Uncompressed size (verified).
    pub chunk_size: u64,
}

/// Columns bound per inserted row.
const INSERT_COLUMNS: usize = 8;

/// Records `chunks`, all in `object_key`, for `(cache, pusher)`; a chunk
/// the pusher already has a row for keeps its row. Returns how many rows
/// were inserted (0: the object holds nothing anyone needs).
pub async fn insert(
    raw: Raw<'_>,
    cache: CacheId,
    pusher: &str,
    chunks: &[PushedChunk],
    now: i64,
) -> Result<u64, DbError> {
    let mut raw = raw;
    let mut inserted = 0;
    for batch in chunks.chunks(BATCH / INSERT_COLUMNS) {
        let values = (0..batch.len())
            .map(|i| format!("({})", placeholders(i * INSERT_COLUMNS + 1, INSERT_COLUMNS)))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO pushed_chunks (cache_id, pusher, chunk_hash, object_key, frame_offset,
                 frame_len, chunk_size, created_at) VALUES {values}
             ON CONFLICT (cache_id, pusher, chunk_hash) DO NOTHING"
        );
        inserted += on_conn!(raw.reborrow(), c => {
            let mut q = sqlx::query(AssertSqlSafe(&*sql));
            for p in batch {
                q = q
                    .bind(cache)
                    .bind(pusher)
                    .bind(&p.hash.as_bytes()[..])
                    .bind(p.object_key.as_str())
                    .bind(p.frame_offset as i64)
                    .bind(p.frame_len as i64)
                    .bind(p.chunk_size as i64)
                    .bind(now);
            }
            Ok::<u64, DbError>(q.execute(&mut *c).await?.rows_affected())
        })?;
    }
    Ok(inserted)
}

/// Which of `hashes` (≤ [`BATCH`] - 2) the pusher has sent to the cache and
/// are not yet expired.
pub async fn find(
    raw: Raw<'_>,
    cache: CacheId,
    pusher: &str,
    hashes: &[ChunkHash],
) -> Result<HashMap<ChunkHash, PushedChunk>, DbError> {
    debug_assert!(hashes.len() <= BATCH - 2);
    if hashes.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT chunk_hash, object_key, frame_offset, frame_len, chunk_size FROM pushed_chunks
         WHERE cache_id = $1 AND pusher = $2 AND chunk_hash IN ({})",
        placeholders(3, hashes.len())
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql)).bind(cache).bind(pusher);
        for h in hashes {
            q = q.bind(&h.as_bytes()[..]);
        }
        let rows = q.fetch_all(&mut *c).await?;
        let mut found = HashMap::with_capacity(rows.len());
        for r in &rows {
            let hash: Vec<u8> = r.try_get("chunk_hash")?;
            let hash = ChunkHash::from_slice(&hash)
                .map_err(|e| corrupt("pushed_chunks.chunk_hash", e))?;
            let key = key_column("pushed_chunks.object_key", r.try_get("object_key")?)?
                .ok_or_else(|| corrupt("pushed_chunks.object_key", "null"))?;
            let (offset, len, size): (i64, i64, i64) =
                (r.try_get("frame_offset")?, r.try_get("frame_len")?, r.try_get("chunk_size")?);
            found.insert(hash, PushedChunk {
                hash,
                object_key: key,
                frame_offset: offset as u64,
                frame_len: len as u64,
                chunk_size: size as u64,
            });
        }
        Ok(found)
    })
}

/// Up to `limit` batch objects whose rows were created before `before`.
pub async fn expired_objects(
    raw: Raw<'_>,
    before: i64,
    limit: i64,
) -> Result<Vec<ObjectKey>, DbError> {
    on_conn!(raw, c => {
        let rows = sqlx::query(
            "SELECT DISTINCT object_key FROM pushed_chunks WHERE created_at < $1
             ORDER BY object_key LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *c)
        .await?;
        let mut keys = Vec::with_capacity(rows.len());
        for r in &rows {
            keys.extend(key_column("pushed_chunks.object_key", r.try_get("object_key")?)?);
        }
        Ok(keys)
    })
}

/// Deletes every row in `key` and hands the object to a staging intent
/// marked for deletion, in the caller's transaction: after the commit no
/// row names it, and the caller (or the next sweep) deletes the object.
pub async fn take_expired(raw: Raw<'_>, key: &ObjectKey, now: i64) -> Result<u64, DbError> {
    let mut raw = raw;
    let deleted = on_conn!(raw.reborrow(), c => {
        let done = sqlx::query("DELETE FROM pushed_chunks WHERE object_key = $1")
            .bind(key.as_str())
            .execute(&mut *c)
            .await?;
        Ok::<u64, DbError>(done.rows_affected())
    })?;
    staging_intents::release(raw, key, now).await?;
    Ok(deleted)
}
