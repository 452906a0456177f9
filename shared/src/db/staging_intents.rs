//! `staging_intents`: staging objects no row holds (docs/gc.md "Staging
//! objects"), so abandoned ones are found through the database and nothing
//! periodic lists `staging/`.
//!
//! A staging object is held by exactly one of: its intent here (an upload
//! writing it, or a deleter removing it), or the `nars` row naming it. The
//! handover is one transaction each way: [`adopt`] in the one inserting the
//! `nars` row, [`release`] in the one clearing or deleting it. A writer
//! commits [`insert`] before the object's first byte, so a crash at any
//! point leaves either a row or an intent.
//!
//! The sweeper takes an intent older than `[staging] max-age` as abandoned
//! ([`claim_abandoned`]); [`adopt`] skips a claimed one, so of an upload
//! committing and the sweeper claiming, exactly one wins (on PostgreSQL they
//! meet on the intent's row lock; SQLite runs one writer at a time).

use sqlx::Row;

use super::staged_chunks::StagedChunks;
use super::{DbError, Raw, key_column};
use crate::on_conn;
use crate::storage::ObjectKey;
use crate::storage::checksum::Checksum;

/// Records that an upload is about to write `key`. Must be committed before
/// the object's first byte is written.
pub async fn insert(raw: Raw<'_>, key: &ObjectKey, now: i64) -> Result<(), DbError> {
    on_conn!(raw, c => {
        sqlx::query("INSERT INTO staging_intents (object_key, created_at) VALUES ($1, $2)")
            .bind(key.as_str())
            .bind(now)
            .execute(&mut *c)
            .await?;
        Ok(())
    })
}

/// Records the checksum of the complete, verified copy at `key`, and the
/// chunk list a chunk-level push verified it as, for the `nars` row that
/// adopts it ([`super::nars::insert_staged`] copies both from here) and so
/// for its ingest, and its size, for the staging quota ([`verified_totals`])
/// until a row adopts it. False when the intent is gone or being deleted
/// (the sweeper took it).
pub async fn record_checksum(
    raw: Raw<'_>,
    key: &ObjectKey,
    checksum: Checksum,
    size: u64,
    chunks: Option<&StagedChunks>,
) -> Result<bool, DbError> {
    let chunks = chunks.map(StagedChunks::encode);
    on_conn!(raw, c => {
        let done = sqlx::query(
            "UPDATE staging_intents SET staged_checksum = $2, staged_size = $3,
                 staged_chunks = $4
             WHERE object_key = $1 AND deleting_at IS NULL",
        )
        .bind(key.as_str())
        .bind(checksum.to_db())
        .bind(i64::try_from(size).unwrap_or(i64::MAX))
        .bind(chunks.as_deref())
        .execute(&mut *c)
        .await?;
        Ok(done.rows_affected() == 1)
    })
}

/// Verified copies no `nars` row holds yet, and their bytes: a chunk-level
/// push's prepared NARs waiting for their publish, stock `nix copy` NARs
/// waiting for their narinfo. The staging quota counts them next to the
/// staged NAR rows ([`super::nars::staged_totals`]), as they fill staging
/// the same way; a copy being deleted no longer counts.
pub async fn verified_totals(raw: Raw<'_>) -> Result<(i64, i64), DbError> {
    on_conn!(raw, c => {
        let row = sqlx::query(
            "SELECT COUNT(*) AS copies, CAST(COALESCE(SUM(staged_size), 0) AS BIGINT) AS bytes
             FROM staging_intents WHERE staged_size IS NOT NULL AND deleting_at IS NULL",
        )
        .fetch_one(&mut *c)
        .await?;
        Ok((row.try_get("copies")?, row.try_get("bytes")?))
    })
}

/// Removes the intent on `key` in the transaction that commits the `nars`
/// row naming it, so the row keeps the object from then on. False when the
/// sweeper has taken it as abandoned (the object may be gone): the caller
/// must roll back.
pub async fn adopt(raw: Raw<'_>, key: &ObjectKey) -> Result<bool, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query(
            "DELETE FROM staging_intents WHERE object_key = $1 AND deleting_at IS NULL",
        )
        .bind(key.as_str())
        .execute(&mut *c)
        .await?;
        Ok(done.rows_affected() == 1)
    })
}

/// Records `key` as being deleted, in the transaction where the last row
/// naming it stops doing so (an ingest done with its staged copy, GC
/// deleting a staged NAR). The caller deletes the object after the commit,
/// then [`remove`]s the intent; if it dies between, the next sweep does.
pub async fn release(raw: Raw<'_>, key: &ObjectKey, now: i64) -> Result<(), DbError> {
    on_conn!(raw, c => {
        sqlx::query(
            "INSERT INTO staging_intents (object_key, created_at, deleting_at) VALUES ($1, $2, $2)
             ON CONFLICT (object_key) DO UPDATE
                 SET deleting_at = COALESCE(staging_intents.deleting_at, excluded.deleting_at)",
        )
        .bind(key.as_str())
        .bind(now)
        .execute(&mut *c)
        .await?;
        Ok(())
    })
}

/// Forgets the intent on `key` once its object is deleted (or was never
/// written).
pub async fn remove(raw: Raw<'_>, key: &ObjectKey) -> Result<(), DbError> {
    on_conn!(raw, c => {
        sqlx::query("DELETE FROM staging_intents WHERE object_key = $1")
            .bind(key.as_str())
            .execute(&mut *c)
            .await?;
        Ok(())
    })
}

/// Marks up to `limit` intents of uploads started before `before` (that
/// never committed: abandoned) as being deleted at `now`; returns how many.
pub async fn claim_abandoned(
    raw: Raw<'_>,
    before: i64,
    now: i64,
    limit: i64,
) -> Result<u64, DbError> {
    // Every key ends in the empty suffix.
    claim_abandoned_ending(raw, "", before, now, limit).await
}

/// [`claim_abandoned`] for the intents of keys ending in `suffix` only.
pub async fn claim_abandoned_ending(
    raw: Raw<'_>,
    suffix: &str,
    before: i64,
    now: i64,
    limit: i64,
) -> Result<u64, DbError> {
    // The suffix is a layout constant; `%` and `_` in it would be wildcards.
    let pattern = format!("%{suffix}");
    on_conn!(raw, c => {
        let done = sqlx::query(
            "UPDATE staging_intents SET deleting_at = $1
             WHERE deleting_at IS NULL AND object_key IN
                 (SELECT object_key FROM staging_intents
                  WHERE deleting_at IS NULL AND created_at < $2 AND object_key LIKE $4
                  ORDER BY created_at LIMIT $3)",
        )
        .bind(now)
        .bind(before)
        .bind(limit)
        .bind(&pattern)
        .execute(&mut *c)
        .await?;
        Ok(done.rows_affected())
    })
}

/// Up to `limit` keys being deleted (claimed or released), oldest first:
/// what the sweeper deletes, including those a dead deleter left.
pub async fn deleting(raw: Raw<'_>, limit: i64) -> Result<Vec<ObjectKey>, DbError> {
    on_conn!(raw, c => {
        let rows = sqlx::query(
            "SELECT object_key FROM staging_intents WHERE deleting_at IS NOT NULL
             ORDER BY deleting_at, object_key LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut *c)
        .await?;
        let mut keys = Vec::with_capacity(rows.len());
        for r in &rows {
            keys.extend(key_column("staging_intents.object_key", r.try_get("object_key")?)?);
        }
        Ok(keys)
    })
}

/// Whether an intent, a `nars` row, a pending `nix copy` upload or a
/// pushed chunk batch names `key`, in one statement (so a handover between them is never missed):
/// what `verify` asks of each staging object it lists.
pub async fn is_known(raw: Raw<'_>, key: &ObjectKey) -> Result<bool, DbError> {
    on_conn!(raw, c => {
        let row = sqlx::query(
            "SELECT 1 AS one FROM staging_intents WHERE object_key = $1
             UNION ALL SELECT 1 AS one FROM nars WHERE staging_key = $1
             UNION ALL SELECT 1 AS one FROM nix_uploads WHERE staging_key = $1
             UNION ALL SELECT 1 AS one FROM pushed_chunks WHERE object_key = $1
             LIMIT 1",
        )
        .bind(key.as_str())
        .fetch_optional(&mut *c)
        .await?;
        Ok(row.is_some())
    })
}
