//! The sweeper: periodic, idempotent repairs that make crashes harmless.
//!
//! - A staged NAR untouched for [`STALE_AFTER`] (its job lost, or every
//!   attempt failed) gets a fresh ingest job. Running ingests heartbeat, so
//!   they are never considered stale.
//! - Revocations of tokens that have expired anyway are dropped.
//! - A staging object older than `[staging] max-age` that no NAR names (an
//!   upload that died before its commit, or a copy left after ingest) is
//!   deleted, so staging never leaks storage forever.
//!
//! - Hourly ([`remove_incomplete`]), temp files of writes cut short by a
//!   crash are removed.
//!
//! Every worker process runs both ([`crate::periodic::TASKS`]); two
//! sweepers at once only repeat work.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;

use larder_shared::db::{nars, tokens};
use larder_shared::jobs;
use larder_shared::storage::layout;

use crate::services::Services;

/// How long a staged NAR may go without progress before it is re-enqueued.
pub const STALE_AFTER: Duration = Duration::from_secs(15 * 60);
/// Pause between sweeps.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// NARs re-enqueued per sweep.
const BATCH: i64 = 100;

/// How often the (whole-tree) scan for interrupted writes runs.
pub const INCOMPLETE_INTERVAL: Duration = Duration::from_secs(3600);

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
        for id in &stale {
            nars::touch(tx.raw(), *id, now).await?;
        }
        jobs::enqueue_ingest(tx.raw(), &stale).await?;
        tx.commit().await?;
        report.requeued = stale.len();
        tracing::info!(count = stale.len(), "re-enqueued stale staged NARs");
    }

    {
        let mut conn = svc.db.conn().await?;
        tokens::prune_revocations(conn.raw(), now).await?;
    }

    let max_age = svc.config.staging.max_age.get();

    let cutoff = SystemTime::UNIX_EPOCH + Duration::from_secs(now.max(0) as u64);
    let mut listing = svc.staging.list(layout::STAGING);
    while let Some(meta) = listing.try_next().await? {
        let old = cutoff
            .duration_since(meta.last_modified)
            .is_ok_and(|age| age > max_age);
        if !old {
            continue;
        }
        let referenced = {
            let mut conn = svc.db.conn().await?;
            nars::staging_key_exists(conn.raw(), meta.key.as_str()).await?
        };
        if !referenced {
            svc.staging.delete(&meta.key).await?;
            report.staging_deleted += 1;
        }
    }
    if report.staging_deleted > 0 {
        tracing::info!(
            count = report.staging_deleted,
            "deleted abandoned staging objects"
        );
    }
    Ok(report)
}
