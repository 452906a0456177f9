//! GC of the documents Nix uploads beside paths: build logs and
//! realisations (docs/gc.md "Build logs and realisations").

use larder_shared::db::{build_logs, caches, realisations};
use larder_shared::retention::Retention;

use super::GcReport;
use crate::services::Services;

/// Deletes build logs, and realisations naming no output, idle for their
/// cache's retention (each is its own use: upload or read), and
/// realisations whose output the cache no longer holds (docs/gc.md "Build
/// logs and realisations"). Runs after the paths' own expiry, so an output
/// and its realisation go in the same pass.
pub(super) async fn expire(svc: &Services, now: i64, report: &mut GcReport) -> anyhow::Result<()> {
    let grace = svc.config.garbage_collection.grace_period.as_secs() as i64;
    let mut conn = svc.db.conn().await?;
    report.realisations_expired += realisations::delete_orphaned(conn.raw(), now - grace).await?;
    for cache in caches::list(conn.raw()).await? {
        let retention = Retention::of(&cache, &svc.config.garbage_collection);
        if let Some(cutoff) = retention.cutoff(now) {
            report.build_logs_expired += build_logs::expire(conn.raw(), cache.id, cutoff).await?;
            report.realisations_expired +=
                realisations::expire(conn.raw(), cache.id, cutoff).await?;
        }
    }
    Ok(())
}
