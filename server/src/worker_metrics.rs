//! `larder-worker`'s HTTP listener on `[worker] metrics-listen`: `GET
//! /metrics`, the process-wide counters (storage requests, packs, moves,
//! jobs) and gauges (jobs in flight, job slots) that an API node shows for
//! its in-process workers, for the workers that run apart from any API
//! (docs/operations.md "Monitoring"); and `GET /_health`, `GET /_ready` as
//! on the API, for container healthchecks and orchestrators (compose.yaml's
//! `worker` service).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use larder_api::routes::health;
use larder_shared::config::Config;
use larder_shared::db::Db;
use larder_shared::storage::Storage;

/// What `/_ready` probes: the worker's own database and chunk storage.
#[derive(Clone)]
pub struct Probes {
    /// The job queue and metadata.
    pub db: Db,
    /// Chunk storage (staging shares it unless configured apart).
    pub storage: Arc<dyn Storage>,
}

/// The worker's routes: `/_health` answers while the process serves,
/// `/_ready` while database and storage are reachable, `/metrics` as
/// `[metrics] token` allows.
pub fn router(config: &Config, probes: Probes) -> Router {
    let metrics = larder_api::routes::metrics::worker_router(config.metrics.token.clone());
    Router::new()
        .route("/_health", get(health::health))
        .route(
            "/_ready",
            get(
                |axum::extract::State(p): axum::extract::State<Probes>| async move {
                    health::readiness(&p.db, p.storage.as_ref()).await
                },
            ),
        )
        .with_state(probes)
        .merge(metrics)
}

/// Binds `[worker] metrics-listen`, if set, and serves [`router`] there
/// until `shutdown`. Binding happens before this returns, so a port that
/// is taken stops the worker's start with an error naming it.
pub async fn spawn(
    config: &Config,
    probes: Probes,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<(SocketAddr, JoinHandle<std::io::Result<()>>)>> {
    let Some(listen) = config.worker.metrics_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding [worker] metrics-listen {listen}"))?;
    let router = router(config, probes);
    let http = config.http.clone();
    tracing::info!(%listen, "larder-worker serving /metrics, /_health and /_ready");
    let served = larder_api::http_server::serve(listener, router, http, shutdown);
    Ok(Some((listen, tokio::spawn(served))))
}
