//! `chunks`: the global content-addressed chunk store, shared by every cache.
//!
//! Lookups and reference updates go in batches of at most [`BATCH`] binds, so
//! no statement grows with the size of a NAR (SQLite caps variables).

use std::collections::HashMap;

use sqlx::{AssertSqlSafe, Row};

use super::{ChunkId, DbError, Raw, placeholders};
use crate::chunk::ChunkHash;
use crate::on_conn;

/// Most values bound in one statement.
pub const BATCH: usize = 100;

/// A chunk as stored.
#[derive(Debug, Clone)]
pub struct ChunkRecord {
    /// Row id (what NAR chunk lists hold).
    pub id: ChunkId,
    /// SHA-256 of the uncompressed chunk.
    pub hash: ChunkHash,
    /// Uncompressed size.
    pub chunk_size: i32,
    /// Compressed (stored) size.
    pub file_size: i32,
    /// Pack holding the chunk; `None` = its own object ([`crate::storage::layout::chunk_key`]).
    pub pack_id: Option<i64>,
    /// Offset inside the pack.
    pub pack_offset: Option<i64>,
    /// Ready NARs listing it; `-1` while GC deletes it (never reuse then).
    pub refcount: i64,
}

/// Columns every [`ChunkRecord`] query selects.
pub(crate) const COLUMNS: &str =
    "id, chunk_hash, chunk_size, file_size, pack_id, pack_offset, refcount";

/// A [`ChunkRecord`] from a row selecting [`COLUMNS`] (expanded per backend).
macro_rules! chunk_from_row {
    ($r:expr) => {{
        let r = $r;
        let hash: Vec<u8> = r.try_get("chunk_hash")?;
        Ok::<_, $crate::db::DbError>($crate::db::chunks::ChunkRecord {
            id: r.try_get("id")?,
            hash: $crate::chunk::ChunkHash::from_slice(&hash)
                .map_err(|e| $crate::db::corrupt("chunks.chunk_hash", e))?,
            chunk_size: r.try_get("chunk_size")?,
            file_size: r.try_get("file_size")?,
            pack_id: r.try_get("pack_id")?,
            pack_offset: r.try_get("pack_offset")?,
            refcount: r.try_get("refcount")?,
        })
    }};
}
pub(crate) use chunk_from_row;

/// Finds which of `hashes` are stored (≤ [`BATCH`] per call), by hash,
/// including chunks being deleted (`refcount < 0`), which callers must not reuse.
pub async fn find_by_hashes(
    raw: Raw<'_>,
    hashes: &[ChunkHash],
) -> Result<HashMap<ChunkHash, ChunkRecord>, DbError> {
    debug_assert!(hashes.len() <= BATCH);
    if hashes.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM chunks WHERE chunk_hash IN ({})",
        placeholders(1, hashes.len())
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql));
        for h in hashes {
            q = q.bind(&h.as_bytes()[..]);
        }
        let rows = q.fetch_all(&mut *c).await?;
        rows.iter()
            .map(|r| chunk_from_row!(r).map(|rec| (rec.hash, rec)))
            .collect()
    })
}

/// Loads chunks by id (≤ [`BATCH`] per call).
pub async fn get_many(
    raw: Raw<'_>,
    ids: &[ChunkId],
) -> Result<HashMap<ChunkId, ChunkRecord>, DbError> {
    debug_assert!(ids.len() <= BATCH);
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM chunks WHERE id IN ({})",
        placeholders(1, ids.len())
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql));
        for id in ids {
            q = q.bind(*id);
        }
        let rows = q.fetch_all(&mut *c).await?;
        rows.iter().map(|r| chunk_from_row!(r).map(|rec| (rec.id, rec))).collect()
    })
}

/// A chunk whose object is stored, to be recorded.
#[derive(Debug, Clone)]
pub struct NewChunk {
    /// Content hash.
    pub hash: ChunkHash,
    /// Uncompressed size.
    pub chunk_size: i32,
    /// Stored size.
    pub file_size: i32,
    /// `(pack id, offset)` of its frame; `None` for a chunk stored as its
    /// own object (`[storage] pack-size = 0`).
    pub pack: Option<(i64, i64)>,
}

/// The chunk rows located in pack `pack`, in the order of their frames
/// (what compaction copies).
pub async fn in_pack(raw: Raw<'_>, pack: i64) -> Result<Vec<ChunkRecord>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM chunks WHERE pack_id = $1 ORDER BY pack_offset");
    on_conn!(raw, c => {
        let rows = sqlx::query(AssertSqlSafe(&*sql)).bind(pack).fetch_all(&mut *c).await?;
        rows.iter().map(|r| chunk_from_row!(r)).collect()
    })
}

/// Referenced chunks stored as their own objects, after `after` by id (a
/// page of what `larder-admin repack` moves into packs).
pub async fn unpacked_page(
    raw: Raw<'_>,
    after: ChunkId,
    limit: i64,
) -> Result<Vec<ChunkRecord>, DbError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM chunks WHERE pack_id IS NULL AND refcount > 0 AND id > $1
         ORDER BY id LIMIT $2"
    );
    on_conn!(raw, c => {
        let rows = sqlx::query(AssertSqlSafe(&*sql))
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *c)
            .await?;
        rows.iter().map(|r| chunk_from_row!(r)).collect()
    })
}
