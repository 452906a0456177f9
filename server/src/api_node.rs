//! An API node: the HTTP server plus `[worker] embedded` in-process workers
//! (the embedded default runs a whole cache in one process this way).

use std::net::SocketAddr;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use larder_api::state::AppState;
use larder_worker::Services;

/// Serves `state` on `listen` until `shutdown`, with the configured number
/// of in-process workers sharing its database and storage. Workers stop
/// with the server: they are cancelled once it returns, and awaited.
pub async fn serve(
    state: AppState,
    listen: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let embedded = state.config.worker.embedded;
    let workers = (embedded > 0).then(|| {
        let svc = Services::new(
            state.config.clone(),
            state.db.clone(),
            state.storage.clone(),
            state.staging.clone(),
        );
        tokio::spawn(larder_worker::run(svc, embedded, shutdown.clone()))
    });
    let served = larder_api::server::serve(state, listen, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(w) = workers {
        w.await.context("worker task")??;
    }
    served
}
