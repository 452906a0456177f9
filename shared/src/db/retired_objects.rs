//! `retired_objects`: storage objects whose bytes were moved elsewhere
//! (`larder-admin repack` moved their chunk into a pack), deleted by GC
//! through the deletion protocol a grace period after they were retired.

use sqlx::{AssertSqlSafe, Row};

use super::{DbError, Raw, placeholders};
use crate::on_conn;
use crate::storage::ObjectKey;

/// Records `keys` (≤ [`super::chunks::BATCH`]) as retired at `now`, in the
/// transaction that moved their rows away.
pub async fn insert(raw: Raw<'_>, keys: &[ObjectKey], now: i64) -> Result<(), DbError> {
    if keys.is_empty() {
        return Ok(());
    }
    let values = (0..keys.len())
        .map(|i| format!("(${}, $1)", i + 2))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO retired_objects (object_key, retired_at) VALUES {values}
         ON CONFLICT (object_key) DO NOTHING"
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql)).bind(now);
        for k in keys {
            q = q.bind(k.as_str());
        }
        q.execute(&mut *c).await?;
        Ok(())
    })
}

/// Keys retired before `before`, after `after` in key order (a page).
pub async fn due(
    raw: Raw<'_>,
    before: i64,
    after: &str,
    limit: i64,
) -> Result<Vec<String>, DbError> {
    on_conn!(raw, c => {
        let rows = sqlx::query(
            "SELECT object_key FROM retired_objects
             WHERE retired_at < $1 AND object_key > $2 ORDER BY object_key LIMIT $3",
        )
        .bind(before)
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *c)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("object_key").map_err(DbError::from))
            .collect()
    })
}

/// Forgets `keys` (≤ [`super::chunks::BATCH`]): deleted, or needed again.
pub async fn forget(raw: Raw<'_>, keys: &[ObjectKey]) -> Result<u64, DbError> {
    if keys.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "DELETE FROM retired_objects WHERE object_key IN ({})",
        placeholders(1, keys.len())
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql));
        for k in keys {
            q = q.bind(k.as_str());
        }
        Ok(q.execute(&mut *c).await?.rows_affected())
    })
}
