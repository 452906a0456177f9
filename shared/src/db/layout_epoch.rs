//! `layout_epoch`: the counter that says whether a NAR's stored layout can
//! be trusted (migration 0013). Recompression changes chunks' stored sizes
//! and bumps it in the same transaction; a layout computed at an older
//! epoch is recomputed from the chunk rows by the next download
//! ([`crate::chunk_store::nar::ChunkLayout::load`]).
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
