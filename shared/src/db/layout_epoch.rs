//! `layout_epoch`: the counter that says whether a NAR's stored layout can
//! be trusted (migration 0013). Whatever moves chunks' frames (compaction,
//! `repack`, recompression, which also changes their stored sizes) bumps
//! it in the same transaction; a layout computed at an older epoch is
//! recomputed from the chunk rows by the next download
//! ([`crate::chunk_store::nar::ChunkLayout::load`]), with an identity
//! naming the frames' new places (what the chunk rows downloads keep are
//! found by, [`crate::chunk_store::nar_rows`]).
//!
//! Whoever stores a layout reads the epoch *before* the chunk rows it
//! computes from, so a change committed in between only makes the layout
//! look stale, never a stale one current.

use sqlx::Row;

use super::{DbError, Raw};
use crate::on_conn;

/// The current epoch.
pub async fn current(raw: Raw<'_>) -> Result<i64, DbError> {
    on_conn!(raw, c => {
        let row = sqlx::query("SELECT epoch FROM layout_epoch WHERE id = 1")
            .fetch_one(&mut *c)
            .await?;
        Ok(row.try_get("epoch")?)
    })
}

/// Starts a new epoch: every stored layout is stale from the commit on.
pub async fn bump(raw: Raw<'_>) -> Result<(), DbError> {
    on_conn!(raw, c => {
        sqlx::query("UPDATE layout_epoch SET epoch = epoch + 1 WHERE id = 1")
            .execute(&mut *c)
            .await?;
        Ok(())
    })
}
