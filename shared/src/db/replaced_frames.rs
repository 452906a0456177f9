//! `replaced_frames`: where recompressed chunks' previous frames are, for
//! the grace period (migration 0013). A download that laid its NAR out just
//! before a recompression committed promised the old frame sizes in its
//! `Content-Length`; it reads those frames from the retired pack instead.

use std::collections::HashMap;

use sqlx::{AssertSqlSafe, Row};

use super::chunks::BATCH;
use super::{ChunkId, DbError, Raw, placeholders};
use crate::on_conn;

/// One chunk's previous frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplacedFrame {
    /// The (retired) pack holding it.
    pub pack_id: i64,
    /// Its offset there.
    pub pack_offset: i64,
    /// Its stored size.
    pub file_size: i32,
}

/// Records `frame` as chunk `id`'s previous frame.
pub async fn insert(
    raw: Raw<'_>,
    id: ChunkId,
    frame: ReplacedFrame,
    now: i64,
) -> Result<(), DbError> {
    on_conn!(raw, c => {
        sqlx::query(
            "INSERT INTO replaced_frames (chunk_id, pack_id, pack_offset, file_size, replaced_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (chunk_id, pack_id) DO NOTHING",
        )
        .bind(id)
        .bind(frame.pack_id)
        .bind(frame.pack_offset)
        .bind(frame.file_size)
        .bind(now)
        .execute(&mut *c)
        .await?;
        Ok(())
    })
}

/// The previous frames of chunks `ids` (≤ [`BATCH`]) that were `file_size`
/// bytes long, by chunk.
pub async fn find(
    raw: Raw<'_>,
    ids: &[(ChunkId, i32)],
) -> Result<HashMap<ChunkId, ReplacedFrame>, DbError> {
    debug_assert!(ids.len() <= BATCH);
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT chunk_id, pack_id, pack_offset, file_size FROM replaced_frames
         WHERE chunk_id IN ({})",
        placeholders(1, ids.len())
    );
    let wanted: HashMap<ChunkId, i32> = ids.iter().copied().collect();
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql));
        for (id, _) in ids {
            q = q.bind(*id);
        }
        let rows = q.fetch_all(&mut *c).await?;
        let mut out = HashMap::new();
        for r in &rows {
            let id: ChunkId = r.try_get("chunk_id")?;
            let frame = ReplacedFrame {
                pack_id: r.try_get("pack_id")?,
                pack_offset: r.try_get("pack_offset")?,
                file_size: r.try_get("file_size")?,
            };
            if wanted.get(&id) == Some(&frame.file_size) {
                out.insert(id, frame);
            }
        }
        Ok(out)
    })
}

/// Forgets frames replaced before `before` (their packs are deleted once
/// as old): returns how many.
pub async fn forget_before(raw: Raw<'_>, before: i64) -> Result<u64, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query("DELETE FROM replaced_frames WHERE replaced_at < $1")
            .bind(before)
            .execute(&mut *c)
            .await?;
        Ok(done.rows_affected())
    })
}
