//! A worker process's work: every queued job ([`crate::queue`]) and every
//! periodic task ([`crate::periodic`]), until shutdown.

use tokio_util::sync::CancellationToken;

use crate::services::Services;
use crate::{periodic, queue};

/// This process's name in the job queue and in leases: unique per start.
fn worker_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "larder".into());
    format!("{host}-{}", ulid::Ulid::new())
}

/// Runs `concurrency` concurrent jobs of each queue, and the periodic
/// tasks, until `shutdown`.
pub async fn run(
    svc: Services,
    concurrency: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let name = worker_name();
    let periodic = tokio::spawn(periodic::run(svc.clone(), name.clone(), shutdown.clone()));
    let result = queue::run(svc, &name, concurrency, shutdown.clone()).await;
    shutdown.cancel();
    let _ = periodic.await;
    result
}
