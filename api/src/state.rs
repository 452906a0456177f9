//! Shared state of the API: loaded once at start, cloned into every handler.

use std::sync::Arc;

use larder_shared::chunk_store::ChunkStore;
use larder_shared::chunk_store::nar_rows::NarRows;
use larder_shared::config::Config;
use larder_shared::db::Db;
use larder_shared::signing_keys::KeyRing;
use larder_shared::storage::Storage;
use larder_shared::token::TokenVerifier;

use crate::access::AccessLog;
use crate::revocations::RevocationCache;

/// What every handler may use; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Configuration, loaded once.
    pub config: Arc<Config>,
    /// Metadata.
    pub db: Db,
    /// The main backend: chunk objects and uploaded NAR files. Chunk bytes
    /// are read through [`AppState::chunks`].
    pub storage: Arc<dyn Storage>,
    /// Staged uploads (the storage backend, or `[staging] path`).
    pub staging: Arc<dyn Storage>,
    /// Verifies bearer tokens.
    pub tokens: Arc<TokenVerifier>,
    /// Tokens already verified, by digest.
    pub verified_tokens: Arc<crate::verified_tokens::VerifiedTokens>,
    /// Caches' configuration, refreshed in the background.
    pub catalog: Arc<crate::cache_catalog::CacheCatalog>,
    /// Revoked tokens, refreshed in the background.
    pub revocations: Arc<RevocationCache>,
    /// Reads noted for retention, flushed in the background.
    pub access: Arc<AccessLog>,
    /// Prometheus counters of this replica.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Narinfo signatures made, by key and fingerprint.
    pub signatures: Arc<crate::narinfo_signatures::NarinfoSignatures>,
    /// Narinfos rendered and signed, by cache and store path.
    pub narinfos: Arc<crate::narinfo_texts::RenderedNarinfos>,
    /// Chunk rows of NARs served lately, reused by their next downloads.
    pub nar_rows: Arc<NarRows>,
    /// The KEK and the cache signing keys opened with it.
    pub keys: Arc<KeyRing>,
    /// `[staging] max-bytes`, `max-nars`, with this replica's last reading
    /// of the staged totals.
    pub staging_quota: Arc<crate::staging_quota::StagingQuota>,
    /// Chunk lists of recent missing-chunks questions, for commits that
    /// name them.
    pub chunk_lists: Arc<crate::chunk_push::lists::ChunkLists>,
    /// Trusted OIDC issuers' keys, fetched on demand (`/_api/v1/oidc/exchange`).
    pub oidc: Arc<larder_shared::oidc::IssuerKeys>,
}

impl AppState {
    /// The chunk store on the main backend: the only way to chunk bytes.
    pub fn chunks(&self) -> ChunkStore {
        ChunkStore::new(self.storage.clone()).with_nar_rows(self.nar_rows.clone())
    }
}
