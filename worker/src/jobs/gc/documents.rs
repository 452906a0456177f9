//! GC of the documents Nix uploads beside paths: build logs and
//! realisations (docs/gc.md "Build logs and realisations").

use larder_shared::db::{build_logs, caches, realisations};
use larder_shared::retention::Retention;

use super::GcReport;
use crate::services::Services;

/// Deletes build logs and realisations idle for their cache's retention:
/// each is its own use (upload or read), independent of the paths'
/// (docs/gc.md "Build logs and realisations").
pub(super) async fn expire(svc: &Services, now: i64, report: &mut GcReport) -> anyhow::Result<()> {
    let mut conn = svc.db.conn().await?;
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
