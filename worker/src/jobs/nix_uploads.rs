//! Clean-up after uploads from stock `nix copy` (larder_shared::db::uploads),
//! run by the sweeper:
//!
//! - pending uploads older than `[staging] max-age` (their narinfo never
//!   came) go, with their staged copies and those copies' staging intents
//!   (which the sweeper would otherwise finish);
//! - uploader URLs that expired go, and those whose path left its cache once
//!   they are `max-age` old (so is their file then, unless a newer upload
//!   wrote it again and has a row of its own);
//! - an upload file (`uploads/…`, content-addressed, possibly shared) goes
//!   once no row names it and it is older than `max-age`. Uploads rely on an
//!   existing file only while it is younger than half of that, so a file in
//!   use by an upload in flight is never deleted;
//! - uploaded `.ls` listings older than `max-age` that describe no path of
//!   their cache go.
//!
//! Every step is idempotent; two sweepers at once only repeat work.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use larder_shared::db::{listings, staging_intents, uploads};

use crate::services::Services;

/// Rows deleted per statement.
const BATCH: i64 = 500;
/// Statements per kind per sweep (bounds one sweep's work).
const MAX_BATCHES: usize = 20;

/// What one clean-up did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UploadSweepReport {
    /// Pending uploads dropped.
    pub pending_dropped: usize,
    /// Uploader URLs dropped.
    pub urls_dropped: usize,
    /// Upload files deleted from storage.
    pub files_deleted: usize,
    /// Uploaded listings dropped.
    pub listings_dropped: u64,
}

/// One clean-up at time `now` (Unix seconds; injectable for tests).
pub async fn sweep(svc: &Services, now: i64) -> anyhow::Result<UploadSweepReport> {
    let mut report = UploadSweepReport::default();
    let max_age = svc.config.staging.max_age.get();
    let before = now - max_age.as_secs() as i64;
    let mut candidates = BTreeSet::new();

    for _ in 0..MAX_BATCHES {
        let released = {
            let mut conn = svc.db.conn().await?;
            uploads::take_stale_pending(conn.raw(), before, BATCH).await?
        };
        let n = released.staging_keys.len().max(released.upload_keys.len());
        for key in &released.staging_keys {
            // Its staging intent held it while the upload was pending.
            svc.staging.delete(key).await?;
            let mut conn = svc.db.conn().await?;
            staging_intents::remove(conn.raw(), key).await?;
        }
        report.pending_dropped += n;
        candidates.extend(released.upload_keys);
        if (n as i64) < BATCH {
            break;
        }
    }

    for _ in 0..MAX_BATCHES {
        let keys = {
            let mut conn = svc.db.conn().await?;
            uploads::take_dead_urls(conn.raw(), now, before, BATCH).await?
        };
        report.urls_dropped += keys.len();
        let done = (keys.len() as i64) < BATCH;
        candidates.extend(keys);
        if done {
            break;
        }
    }

    let cutoff = SystemTime::UNIX_EPOCH + Duration::from_secs(now.max(0) as u64);
    for key in candidates {
        let in_use = {
            let mut conn = svc.db.conn().await?;
            uploads::upload_key_in_use(conn.raw(), &key).await?
        };
        if in_use {
            continue;
        }
        let Some(meta) = svc.storage.head(&key).await? else {
            continue;
        };
        let old = cutoff
            .duration_since(meta.last_modified)
            .is_ok_and(|age| age > max_age);
        if old {
            svc.storage.delete(&key).await?;
            report.files_deleted += 1;
        }
    }

    {
        let mut conn = svc.db.conn().await?;
        report.listings_dropped = listings::prune_uploaded_listings(conn.raw(), before).await?;
    }
    if report != UploadSweepReport::default() {
        tracing::info!(?report, "cleaned up after nix copy uploads");
    }
    Ok(report)
}
