//! Wiring: state from config, the listener, shutdown. In-process workers
//! are the binary's business (larder-server), not this library's.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use larder_shared::bootstrap;
use larder_shared::chunk_store::nar_rows::NarRows;
use larder_shared::config::Config;
use larder_shared::db::unix_now;
use larder_shared::oidc::IssuerKeys;
use larder_shared::signing_keys::{Kek, KeyRing};
use larder_shared::token::{TokenKey, TokenVerifier};

use crate::staging_quota::StagingQuota;
use crate::state::AppState;
use crate::{app, http_server};

/// Opens database, storage and the token verifier named by `config`.
pub async fn build_state(config: Arc<Config>) -> anyhow::Result<AppState> {
    let pool_size = 16 + config.worker.embedded as u32 * 2;
    let opened = bootstrap::open(&config, pool_size)
        .await
        .context("opening database and storage")?;
    let key = TokenKey::from_config(&config.jwt.signing).context("loading the JWT key")?;
    // Without the KEK the server could neither sign nor create a cache.
    let kek = Kek::require(&config.signing).context("loading the signing key-encryption key")?;
    let tokens = TokenVerifier::new(
        key,
        config.jwt.token_bound_issuer.clone(),
        config.jwt.token_bound_audiences.clone(),
    );
    let staging_quota = Arc::new(StagingQuota::new(&config.staging));
    let oidc = IssuerKeys::new(
        config.oidc.jwks_min_refresh.get(),
        config.oidc.jwks_max_age.get(),
    )
    .context("building the OIDC issuers' HTTP client")?;
    let nar_rows = Arc::new(NarRows::new(NarRows::ttl_for_grace(
        config.garbage_collection.grace_period.get(),
    )));
    Ok(AppState {
        config,
        db: opened.db,
        storage: opened.storage,
        staging: opened.staging,
        tokens: Arc::new(tokens),
        verified_tokens: Arc::default(),
        catalog: Arc::default(),
        signatures: Arc::default(),
        narinfos: Arc::default(),
        nar_rows,
        chunk_lists: Arc::default(),
        revocations: Arc::default(),
        access: Arc::default(),
        metrics: Arc::default(),
        keys: Arc::new(KeyRing::new(kek)),
        staging_quota,
        oidc: Arc::new(oidc),
    })
}

/// Migrates (unless `migrate` is false), seals plain signing keys and opens
/// every active one: a wrong KEK or a bad key file stops the start here.
pub async fn prepare_db(state: &AppState, migrate: bool) -> anyhow::Result<()> {
    if migrate {
        state.db.migrate().await.context("applying migrations")?;
    }
    larder_shared::signing_keys::at_rest::prepare(&state.db, Some(state.keys.kek()), unix_now())
        .await
        .context("sealing signing keys")?;
    let n = state
        .keys
        .open_all(&state.db, unix_now())
        .await
        .context("opening the caches' signing keys")?;
    tracing::debug!(keys = n, "signing keys opened");
    Ok(())
}

/// Serves until `shutdown`.
pub async fn serve(
    state: AppState,
    listen: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    state
        .revocations
        .refresh(&state.db)
        .await
        .context("loading token revocations")?;
    state
        .catalog
        .refresh(&state.db)
        .await
        .context("loading the caches")?;
    spawn_refresher(&state, shutdown.clone());
    state.access.clone().spawn_flusher(
        state.db.clone(),
        state.config.access.flush_interval.get(),
        shutdown.clone(),
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(
        %listen,
        embedded_workers = state.config.worker.embedded,
        "larder-api listening"
    );
    let http = state.config.http.clone();
    let router = app::router(state);
    http_server::serve(listener, router, http, shutdown.clone())
        .await
        .context("serving HTTP")?;
    Ok(())
}

/// Reloads the revocation list and the cache catalog every `[jwt]
/// revocation-refresh` until `shutdown`, in one task: a revocation and a
/// cache change reach this replica within the same interval. A failed
/// reload keeps what is held and is retried next time.
fn spawn_refresher(state: &AppState, shutdown: CancellationToken) {
    let interval = state.config.jwt.revocation_refresh.get();
    let (db, revocations, catalog) = (
        state.db.clone(),
        state.revocations.clone(),
        state.catalog.clone(),
    );
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            if let Err(e) = revocations.refresh(&db).await {
                tracing::warn!(error = %e, "revocation refresh failed; keeping the previous list");
            }
            if let Err(e) = catalog.refresh(&db).await {
                tracing::warn!(error = %e, "cache catalog refresh failed; keeping the previous one");
            }
        }
    });
}
