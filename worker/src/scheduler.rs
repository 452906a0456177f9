//! Runs periodic jobs (GC every `[garbage-collection] interval`) from every
//! worker process. Each worker checks once a minute when GC last finished
//! cluster-wide; the GC lease makes sure only one runs at a time.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use larder_shared::db::{leases, unix_now};

use crate::jobs::gc;
use crate::services::Services;

/// How often a worker checks whether GC is due.
pub const CHECK: Duration = Duration::from_secs(60);

/// Checks until `shutdown`; `holder` names this process in the lease.
pub async fn run(svc: Services, holder: String, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CHECK) => {}
        }
        if let Err(e) = tick(&svc, &holder, unix_now()).await {
            tracing::warn!(error = %format!("{e:#}"), "garbage collection failed; retrying later");
        }
    }
}

/// Runs GC if its interval has passed since the last completed run.
pub async fn tick(svc: &Services, holder: &str, now: i64) -> anyhow::Result<Option<gc::GcReport>> {
    let interval = svc.config.garbage_collection.interval.as_secs() as i64;
    let last = {
        let mut conn = svc.db.conn().await?;
        leases::last_finished(conn.raw(), gc::LEASE).await?
    };
    if last.is_some_and(|t| now - t < interval) {
        return Ok(None);
    }
    gc::run(svc, now, holder).await
}
