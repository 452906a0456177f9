//! The sweeper: periodic, idempotent repairs that make crashes harmless.
//!
//! - A staged NAR untouched for [`STALE_AFTER`] (its job lost, or every
//!   attempt failed) gets a fresh ingest job. Running ingests heartbeat, so
//!   they are never considered stale.
//! - Revocations of tokens that have expired anyway are dropped, and the
//!   records of tokens expired longer than [`TOKEN_RECORDS_KEPT`] (one per
//!   OIDC exchange, so one per CI job) with them.
//! - Abandoned staging objects are deleted, found through their staging
//!   intents (docs/gc.md "Staging objects"), never by listing storage: an
//!   upload's intent older than `[staging] max-age` (it died before its
//!   commit) is claimed, and every claimed or released intent (a copy an
//!   ingest or GC let go, and crashed before deleting) has its object
//!   deleted, then goes itself. So staging never leaks storage.
//! - Chunk batches sent by chunk-level push expire a GC grace period after
//!   they arrived ([`expire_pushed_chunks`]): their rows go and their
//!   objects are handed to staging intents, deleted by the step above.
//!
//! - Hourly ([`remove_incomplete`]), temp files of writes cut short by a
//!   crash are removed.
//!
//! Every worker process runs both ([`crate::periodic::TASKS`]); two
//! sweepers at once only repeat work.

use std::sync::Arc;
use std::time::Duration;

use larder_shared::db::{nars, pushed_chunks, staging_intents, tokens};
use larder_shared::jobs;
use larder_shared::storage::layout;

use crate::services::Services;

/// How long a staged NAR may go without progress before it is re-enqueued.
pub const STALE_AFTER: Duration = Duration::from_secs(15 * 60);
/// Pause between sweeps.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// How long `list-tokens` still shows a token after it expired.
pub const TOKEN_RECORDS_KEPT: Duration = Duration::from_secs(30 * 24 * 3600);
/// NARs re-enqueued, and staging intents claimed or deleted, per batch.
const BATCH: i64 = 100;
/// Batches of staging deletions per sweep (bounds one sweep's work).
const MAX_BATCHES: usize = 20;

/// How often the (whole-tree) scan for interrupted writes runs.
pub const INCOMPLETE_INTERVAL: Duration = Duration::from_secs(3600);
/// How long a NAR prepared by chunk-level push waits for its publish
/// before the sweeper deletes it (or `[staging] max-age`, if shorter). A
/// client publishes within seconds of its references, and one that comes
/// later gets `409 PreparedMissing` and commits in one step; kept short
/// because a prepare stages a whole NAR from chunks the cache already has
/// for the price of a chunk list, so copies never published must not pile
/// up for a day.
pub const PREPARED_MAX_AGE: Duration = Duration::from_secs(3600);

/// Removes temp files of writes cut short by a crash, older than
/// `[staging] max-age` (no upload runs that long). Walks the whole storage
/// tree, so it runs hourly, not every sweep.
pub async fn remove_incomplete(svc: &Services) -> anyhow::Result<u64> {
    let max_age = svc.config.staging.max_age.get();
    let mut n = svc.staging.remove_incomplete(max_age).await?;
    if !Arc::ptr_eq(&svc.staging, &svc.storage) {
        n += svc.storage.remove_incomplete(max_age).await?;
    }
    if n > 0 {
        tracing::info!(count = n, "removed temp files of interrupted writes");
    }
    Ok(n)
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Staged NARs given a new ingest job.
    pub requeued: usize,
    /// Orphaned staging objects deleted.
    pub staging_deleted: usize,
    /// Expired chunk batches of chunk-level push released for deletion.
    pub pushed_batches_expired: usize,
    /// Records of tokens expired longer than [`TOKEN_RECORDS_KEPT`] dropped.
    pub token_records_pruned: u64,
}

/// One sweep at time `now` (Unix seconds; injectable for tests).
pub async fn sweep(svc: &Services, now: i64) -> anyhow::Result<SweepReport> {
    let mut report = SweepReport::default();
    let before = now - STALE_AFTER.as_secs() as i64;
    let stale = {
        let mut conn = svc.db.conn().await?;
        nars::stale_staged(conn.raw(), before, BATCH).await?
    };
    if !stale.is_empty() {
        let mut tx = svc.db.begin().await?;
        for nar in &stale {
            nars::touch(tx.raw(), nar.nar_id, now).await?;
        }
        jobs::enqueue_ingest(tx.raw(), &stale).await?;
        tx.commit().await?;
        report.requeued = stale.len();
        tracing::info!(count = stale.len(), "re-enqueued stale staged NARs");
    }

    {
        let mut conn = svc.db.conn().await?;
        tokens::prune_revocations(conn.raw(), now).await?;
        let before = now - TOKEN_RECORDS_KEPT.as_secs() as i64;
        report.token_records_pruned = tokens::prune_expired(conn.raw(), before).await?;
    }

    report.pushed_batches_expired = expire_pushed_chunks(svc, now).await?;
    report.staging_deleted = delete_abandoned_staging(svc, now).await?;
    if report.staging_deleted > 0 {
        tracing::info!(
            count = report.staging_deleted,
            "deleted abandoned staging objects"
        );
    }
    Ok(report)
}

/// Claims the intents of uploads started more than `[staging] max-age`
/// before `now`, then deletes the objects of claimed and released intents,
/// each followed by its intent. A key a `nars` row names (which no intent
/// should outlive) keeps its object; only the intent goes. Returns how many
/// objects were deleted.
async fn delete_abandoned_staging(svc: &Services, now: i64) -> anyhow::Result<usize> {
    let max_age = svc.config.staging.max_age.get();
    let before = now - max_age.as_secs() as i64;
    let prepared_before = now - PREPARED_MAX_AGE.min(max_age).as_secs() as i64;
    let mut deleted = 0;
    for _ in 0..MAX_BATCHES {
        let (claimed, keys) = {
            let mut conn = svc.db.conn().await?;
            let claimed = staging_intents::claim_abandoned(conn.raw(), before, now, BATCH).await?
                + staging_intents::claim_abandoned_ending(
                    conn.raw(),
                    layout::PREPARED_NAR_SUFFIX,
                    prepared_before,
                    now,
                    BATCH,
                )
                .await?;
            (claimed, staging_intents::deleting(conn.raw(), BATCH).await?)
        };
        for key in &keys {
            let named = {
                let mut conn = svc.db.conn().await?;
                nars::staging_key_exists(conn.raw(), key.as_str()).await?
            };
            if !named {
                svc.staging.delete(key).await?;
                deleted += 1;
            }
            let mut conn = svc.db.conn().await?;
            staging_intents::remove(conn.raw(), key).await?;
        }
        if (keys.len() as i64) < BATCH && (claimed as i64) < BATCH {
            break;
        }
    }
    Ok(deleted)
}

/// Releases the chunk batches of chunk-level push received more than
/// `[garbage-collection] grace-period` before `now`: in one transaction per
/// batch its rows go and its object gets a deleting staging intent, which
/// [`delete_abandoned_staging`] finishes. Returns how many batches.
pub async fn expire_pushed_chunks(svc: &Services, now: i64) -> anyhow::Result<usize> {
    let before = now - svc.config.garbage_collection.grace_period.get().as_secs() as i64;
    let mut expired = 0;
    for _ in 0..MAX_BATCHES {
        let keys = {
            let mut conn = svc.db.conn().await?;
            pushed_chunks::expired_objects(conn.raw(), before, BATCH).await?
        };
        for key in &keys {
            let mut tx = svc.db.begin().await?;
            pushed_chunks::take_expired(tx.raw(), key, now).await?;
            tx.commit().await?;
        }
        expired += keys.len();
        if (keys.len() as i64) < BATCH {
            break;
        }
    }
    if expired > 0 {
        tracing::info!(count = expired, "expired pushed chunk batches");
    }
    Ok(expired)
}
