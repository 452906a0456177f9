//! `leases`: run a periodic job (GC) once cluster-wide, however many workers
//! run. A lease expires by itself, so a holder killed with `kill -9` blocks
//! nobody for longer than its TTL; nothing depends on a clean shutdown.

use sqlx::Row;

use super::{DbError, Raw};
use crate::on_conn;

/// Takes the lease `name` for `holder` until `now + ttl` if it is free,
/// expired, or already ours. Returns whether we hold it.
pub async fn try_acquire(
    raw: Raw<'_>,
    name: &str,
    holder: &str,
    now: i64,
    ttl: i64,
) -> Result<bool, DbError> {
    try_acquire_if_due(raw, name, holder, now, ttl, None).await
}

/// [`try_acquire`], and only if no run finished after `finished_before`
/// (when given): the check and the take are one statement, so workers that
/// all found a scheduled run due at once run it once, not one after another.
pub async fn try_acquire_if_due(
    raw: Raw<'_>,
    name: &str,
    holder: &str,
    now: i64,
    ttl: i64,
    finished_before: Option<i64>,
) -> Result<bool, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
             WHERE (leases.expires_at < $4 OR leases.holder = excluded.holder OR leases.holder IS NULL)
               AND ($5 IS NULL OR leases.last_finished_at IS NULL OR leases.last_finished_at < $5)",
        )
        .bind(name)
        .bind(holder)
        .bind(now + ttl)
        .bind(now)
        .bind(finished_before)
        .execute(&mut *c)
        .await?;
        Ok(done.rows_affected() == 1)
    })
}

/// Extends a held lease; false if it was lost (expired and taken over).
pub async fn renew(
    raw: Raw<'_>,
    name: &str,
    holder: &str,
    now: i64,
    ttl: i64,
) -> Result<bool, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query("UPDATE leases SET expires_at = $3 WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .bind(now + ttl)
            .execute(&mut *c)
            .await?;
        Ok(done.rows_affected() == 1)
    })
}

/// Releases a held lease and records a completed run at `now`.
pub async fn finish(raw: Raw<'_>, name: &str, holder: &str, now: i64) -> Result<(), DbError> {
    on_conn!(raw, c => {
        sqlx::query(
            "UPDATE leases SET holder = NULL, expires_at = 0, last_finished_at = $3
             WHERE name = $1 AND holder = $2",
        )
        .bind(name)
        .bind(holder)
        .bind(now)
        .execute(&mut *c)
        .await?;
        Ok(())
    })
}

/// Releases a held lease without recording a run (the run failed).
pub async fn release(raw: Raw<'_>, name: &str, holder: &str) -> Result<(), DbError> {
    on_conn!(raw, c => {
        sqlx::query("UPDATE leases SET holder = NULL, expires_at = 0 WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&mut *c)
            .await?;
        Ok(())
    })
}

/// When a run of `name` last completed.
pub async fn last_finished(raw: Raw<'_>, name: &str) -> Result<Option<i64>, DbError> {
    on_conn!(raw, c => {
        let row = sqlx::query("SELECT last_finished_at FROM leases WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *c)
            .await?;
        Ok(match row {
            Some(r) => r.try_get::<Option<i64>, _>("last_finished_at")?,
            None => None,
        })
    })
}
