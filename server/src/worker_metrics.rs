//! `larder-worker`'s `GET /metrics` on `[worker] metrics-listen`: the
//! process-wide counters (storage requests, packs, moves, jobs) and gauges
//! (jobs in flight, job slots) that an
//! API node shows for its in-process workers, for the workers that run
//! apart from any API (docs/operations.md "Monitoring").

use std::net::SocketAddr;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use larder_shared::config::Config;

/// Binds `[worker] metrics-listen`, if set, and serves `/metrics` there
/// until `shutdown`. Binding happens before this returns, so a port that
/// is taken stops the worker's start with an error naming it.
pub async fn spawn(
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<(SocketAddr, JoinHandle<std::io::Result<()>>)>> {
    let Some(listen) = config.worker.metrics_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding [worker] metrics-listen {listen}"))?;
    let router = larder_api::routes::metrics::worker_router(config.metrics.token.clone());
    let http = config.http.clone();
    tracing::info!(%listen, "larder-worker serving /metrics");
    let served = larder_api::http_server::serve(listener, router, http, shutdown);
    Ok(Some((listen, tokio::spawn(served))))
}
