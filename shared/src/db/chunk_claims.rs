//! `chunk_intents` and `chunk_deletions`: who may write, and who may delete,
//! a storage object (docs/gc.md, "Who may delete an object"); and
//! `retired_objects`, objects whose bytes moved elsewhere, for GC to delete.
//!
//! A writer commits an *intent* on the key before it writes the object and
//! then looks for a deletion *claim*; a deleter commits a claim before it
//! looks for intents and rows. Each side commits its own row before it reads
//! the other's, so whichever commits second sees the first and backs off:
//! no locks, no timing, the same on PostgreSQL (READ COMMITTED) and SQLite.
//! These are the two tables' only queries; the protocol around them lives
//! in the worker (`chunk_deletion` for deleters, `jobs::ingest` for writers).
//!
//! Keys are storage object keys, not chunk hashes, so a pack holding many
//! chunks is claimed the same way. Every call binds at most
//! [`super::chunks::BATCH`] keys.

use std::collections::HashMap;

use sqlx::{AssertSqlSafe, Row};

use super::{DbError, Raw, placeholders};
use crate::on_conn;
use crate::storage::ObjectKey;

/// Runs `sql` (a statement over `keys` bound from `$first` on, after the
/// scalar `head` binds) and returns the `object_key` column of its rows.
macro_rules! key_rows {
    ($raw:expr, $sql:expr, [$($head:expr),*], $keys:expr) => {{
        let sql: String = $sql;
        on_conn!($raw, c => {
            let mut q = sqlx::query(AssertSqlSafe(&*sql));
            $(q = q.bind($head);)*
            for k in $keys {
                q = q.bind(k.as_str());
            }
            let rows = q.fetch_all(&mut *c).await?;
            rows.iter()
                .map(|r| r.try_get::<String, _>("object_key").map_err(DbError::from))
                .collect::<Result<Vec<String>, DbError>>()
        })
    }};
}

/// Runs `sql` like [`key_rows`] and returns how many rows it changed.
macro_rules! key_exec {
    ($raw:expr, $sql:expr, [$($head:expr),*], $keys:expr) => {{
        let sql: String = $sql;
        on_conn!($raw, c => {
            let mut q = sqlx::query(AssertSqlSafe(&*sql));
            $(q = q.bind($head);)*
            for k in $keys {
                q = q.bind(k.as_str());
            }
            Ok::<u64, DbError>(q.execute(&mut *c).await?.rows_affected())
        })
    }};
}

/// No keys, for statements whose binds are all scalars.
const NO_KEYS: &[ObjectKey] = &[];

// --- writers ------------------------------------------------------------------------

/// Records that `owner` (one ingest run) is about to write `keys`. Returns
/// the keys newly recorded (a key the owner already holds is left out), so
/// the owner can count what its commit must remove. Must be committed
/// before [`claimed`] is asked and before any object is written.
pub async fn insert_intents(
    raw: Raw<'_>,
    owner: &str,
    keys: &[ObjectKey],
    now: i64,
) -> Result<Vec<String>, DbError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let values = (0..keys.len())
        .map(|i| format!("(${}, $1, $2)", i + 3))
        .collect::<Vec<_>>()
        .join(", ");
    key_rows!(
        raw,
        format!(
            "INSERT INTO chunk_intents (object_key, owner, updated_at) VALUES {values}
             ON CONFLICT (object_key, owner) DO NOTHING RETURNING object_key"
        ),
        [owner, now],
        keys
    )
}

/// Which of `keys` a deleter has claimed: a writer that committed its
/// intents and then finds one here must not write it.
pub async fn claimed(raw: Raw<'_>, keys: &[ObjectKey]) -> Result<Vec<String>, DbError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    key_rows!(
        raw,
        format!(
            "SELECT object_key FROM chunk_deletions WHERE object_key IN ({})",
            placeholders(1, keys.len())
        ),
        [],
        keys
    )
}

/// Withdraws `owner`'s intents on `keys` (a writer backing off before it
/// wrote them).
pub async fn drop_intents(raw: Raw<'_>, owner: &str, keys: &[ObjectKey]) -> Result<u64, DbError> {
    if keys.is_empty() {
        return Ok(0);
    }
    key_exec!(
        raw,
        format!(
            "DELETE FROM chunk_intents WHERE owner = $1 AND object_key IN ({})",
            placeholders(2, keys.len())
        ),
        [owner],
        keys
    )
}

/// Removes every intent of `owner`, in the transaction that commits the
/// rows naming its objects. Returns how many went: fewer than the owner
/// recorded means a deleter reclaimed some as stale (and may have deleted
/// their objects), so the caller must roll back.
pub async fn release_intents(raw: Raw<'_>, owner: &str) -> Result<u64, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query("DELETE FROM chunk_intents WHERE owner = $1")
            .bind(owner)
            .execute(&mut *c)
            .await?;
        Ok(done.rows_affected())
    })
}

/// [`release_intents`] for several owners at once (a group commit); returns
/// how many went per owner (an owner with none is absent).
pub async fn release_intents_of(
    raw: Raw<'_>,
    owners: &[&str],
) -> Result<HashMap<String, u64>, DbError> {
    let mut out: HashMap<String, u64> = HashMap::new();
    if owners.is_empty() {
        return Ok(out);
    }
    let sql = format!(
        "DELETE FROM chunk_intents WHERE owner IN ({}) RETURNING owner",
        placeholders(1, owners.len())
    );
    let rows = on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql));
        for o in owners {
            q = q.bind(*o);
        }
        q.fetch_all(&mut *c).await?
            .iter()
            .map(|r| r.try_get::<String, _>("owner"))
            .collect::<Result<Vec<_>, _>>()?
    });
    for owner in rows {
        *out.entry(owner).or_default() += 1;
    }
    Ok(out)
}

/// Marks `owner`'s intents as alive at `now` (the ingest heartbeat), so a
/// long ingest's intents do not look abandoned. Liveness only: a deleter
/// that reclaimed one first makes the owner's commit fail instead.
pub async fn touch_intents(raw: Raw<'_>, owner: &str, now: i64) -> Result<u64, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query("UPDATE chunk_intents SET updated_at = $2 WHERE owner = $1")
            .bind(owner)
            .bind(now)
            .execute(&mut *c)
            .await?;
        Ok(done.rows_affected())
    })
}

// --- deleters -------------------------------------------------------------------------

/// Claims `keys` for deletion (a claim already there, left by a deleter that
/// died, is kept and taken over). Must be committed before [`reclaim_stale`]
/// and [`intended`] are asked.
pub async fn claim(raw: Raw<'_>, keys: &[ObjectKey], now: i64) -> Result<(), DbError> {
    if keys.is_empty() {
        return Ok(());
    }
    let values = (0..keys.len())
        .map(|i| format!("(${}, $1)", i + 2))
        .collect::<Vec<_>>()
        .join(", ");
    key_exec!(
        raw,
        format!(
            "INSERT INTO chunk_deletions (object_key, created_at) VALUES {values}
             ON CONFLICT (object_key) DO NOTHING"
        ),
        [now],
        keys
    )?;
    Ok(())
}

/// Deletes intents on `keys` last refreshed before `cutoff` (their writer
/// died or stalled past the grace period): their owners' commits then fail.
pub async fn reclaim_stale(raw: Raw<'_>, keys: &[ObjectKey], cutoff: i64) -> Result<u64, DbError> {
    if keys.is_empty() {
        return Ok(0);
    }
    key_exec!(
        raw,
        format!(
            "DELETE FROM chunk_intents WHERE updated_at < $1 AND object_key IN ({})",
            placeholders(2, keys.len())
        ),
        [cutoff],
        keys
    )
}

/// Which of `keys` some writer still intends to write (or has written and
/// not committed yet): a deleter must keep those.
pub async fn intended(raw: Raw<'_>, keys: &[ObjectKey]) -> Result<Vec<String>, DbError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    key_rows!(
        raw,
        format!(
            "SELECT DISTINCT object_key FROM chunk_intents WHERE object_key IN ({})",
            placeholders(1, keys.len())
        ),
        [],
        keys
    )
}

/// Removes the claims on `keys` (the object is gone, or was kept).
pub async fn release_claims(raw: Raw<'_>, keys: &[ObjectKey]) -> Result<u64, DbError> {
    if keys.is_empty() {
        return Ok(0);
    }
    key_exec!(
        raw,
        format!(
            "DELETE FROM chunk_deletions WHERE object_key IN ({})",
            placeholders(1, keys.len())
        ),
        [],
        keys
    )
}

/// Keys above `after` with an intent last refreshed before `cutoff`, by key,
/// at most `limit`: objects a dead writer may have left, found without
/// listing storage.
pub async fn stale_intent_keys(
    raw: Raw<'_>,
    after: &str,
    cutoff: i64,
    limit: i64,
) -> Result<Vec<String>, DbError> {
    key_rows!(
        raw,
        "SELECT DISTINCT object_key FROM chunk_intents
         WHERE updated_at < $1 AND object_key > $2 ORDER BY object_key LIMIT $3"
            .to_owned(),
        [cutoff, after, limit],
        NO_KEYS
    )
}

/// Claimed keys above `after`, by key, at most `limit`: claims a deleter
/// left when it died, for the next GC to finish.
pub async fn claims_page(raw: Raw<'_>, after: &str, limit: i64) -> Result<Vec<String>, DbError> {
    key_rows!(
        raw,
        "SELECT object_key FROM chunk_deletions WHERE object_key > $1 ORDER BY object_key LIMIT $2"
            .to_owned(),
        [after, limit],
        NO_KEYS
    )
}

// --- retired objects -------------------------------------------------------------------

/// Records `keys` (≤ [`super::chunks::BATCH`]) as retired at `now`: objects
/// whose bytes moved elsewhere (`larder-admin repack` moved their chunk into
/// a pack), in the transaction that moved their rows away. GC deletes them
/// through the deletion protocol a grace period later.
pub async fn retire(raw: Raw<'_>, keys: &[ObjectKey], now: i64) -> Result<u64, DbError> {
    if keys.is_empty() {
        return Ok(0);
    }
    let values = (0..keys.len())
        .map(|i| format!("(${}, $1)", i + 2))
        .collect::<Vec<_>>()
        .join(", ");
    key_exec!(
        raw,
        format!(
            "INSERT INTO retired_objects (object_key, retired_at) VALUES {values}
             ON CONFLICT (object_key) DO NOTHING"
        ),
        [now],
        keys
    )
}

/// Keys retired before `before` and above `after`, by key, at most `limit`.
pub async fn retired_before(
    raw: Raw<'_>,
    before: i64,
    after: &str,
    limit: i64,
) -> Result<Vec<String>, DbError> {
    key_rows!(
        raw,
        "SELECT object_key FROM retired_objects
         WHERE retired_at < $1 AND object_key > $2 ORDER BY object_key LIMIT $3"
            .to_owned(),
        [before, after, limit],
        NO_KEYS
    )
}

/// Forgets retired `keys` (≤ [`super::chunks::BATCH`]): deleted, or needed
/// again.
pub async fn forget_retired(raw: Raw<'_>, keys: &[ObjectKey]) -> Result<u64, DbError> {
    if keys.is_empty() {
        return Ok(0);
    }
    key_exec!(
        raw,
        format!(
            "DELETE FROM retired_objects WHERE object_key IN ({})",
            placeholders(1, keys.len())
        ),
        [],
        keys
    )
}
