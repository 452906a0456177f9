//! Staging objects nothing names: no staging intent, no `nars` row, no
//! pending `nix copy` upload (docs/gc.md "Staging objects"). Since every
//! upload commits its intent before its first byte, these are what versions
//! before staging intents left (an upload or ingest that died), or the
//! rare object of an upload that outlived `[staging] max-age` and then
//! crashed. Verify is the one place `staging/` is listed.

use std::time::{Duration, SystemTime};

use futures::TryStreamExt;

use larder_shared::db::staging_intents;
use larder_shared::storage::layout;

use super::VerifyReport;
use crate::services::Services;

/// Lists `staging/` and reports the objects nothing names; with `repair`,
/// deletes those older than `[staging] max-age` (no upload of any version
/// commits an object that old).
pub(super) async fn find_orphans(
    svc: &Services,
    now: i64,
    repair: bool,
    report: &mut VerifyReport,
) -> anyhow::Result<()> {
    let max_age = svc.config.staging.max_age.get();
    let now_t = SystemTime::UNIX_EPOCH + Duration::from_secs(now.max(0) as u64);
    let mut listing = svc.staging.list(layout::STAGING);
    while let Some(meta) = listing.try_next().await? {
        let known = {
            let mut conn = svc.db.conn().await?;
            staging_intents::is_known(conn.raw(), &meta.key).await?
        };
        if known {
            continue;
        }
        report.orphan_staging.push(meta.key.as_str().to_owned());
        let old = now_t
            .duration_since(meta.last_modified)
            .is_ok_and(|age| age > max_age);
        if repair && old {
            svc.staging.delete(&meta.key).await?;
            report.orphan_staging_deleted += 1;
        }
    }
    Ok(())
}
