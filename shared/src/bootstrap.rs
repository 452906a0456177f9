//! Opens what every process needs from one [`Config`]: the database pool and
//! the storage backend. Shared by the API, the workers and the admin CLI so
//! they can never disagree about where data lives.

use std::sync::Arc;

use crate::config::{Config, StorageConfig};
use crate::db::{Db, DbError};
use crate::storage::local::LocalStorage;
use crate::storage::s3::S3Storage;
use crate::storage::{Storage, StorageError};

/// Why start-up failed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// Database unreachable or migrations failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Storage backend unusable.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Opens the storage backend named by the config.
pub fn open_storage(config: &StorageConfig) -> Result<Arc<dyn Storage>, StorageError> {
    match config {
        StorageConfig::Local { path } => Ok(Arc::new(LocalStorage::new(path.clone())?)),
        StorageConfig::S3(s3) => Ok(Arc::new(S3Storage::new(s3)?)),
    }
}

/// Opens where staged uploads live: `[staging.storage]` or `[staging] path`
/// if set (every worker host must reach it), else the storage backend itself
/// (keys under `staging/`).
pub fn open_staging(
    config: &Config,
    storage: &Arc<dyn Storage>,
) -> Result<Arc<dyn Storage>, StorageError> {
    match (&config.staging.storage, &config.staging.path) {
        (Some(own), _) => open_storage(own),
        (None, Some(path)) => Ok(Arc::new(LocalStorage::new(path.clone())?)),
        (None, None) => Ok(storage.clone()),
    }
}

/// Connects to the database named by the config, with `max_connections`.
pub async fn open_db(config: &Config, max_connections: u32) -> Result<Db, DbError> {
    Db::connect(config.database.url.expose(), max_connections).await
}

/// Seals the plain signing keys an upgrade left (with the config's KEK, if
/// any: needed, and read successfully, only when there are such keys) and
/// clears retired secrets;
/// every process runs it after migrating (see [`crate::signing_keys::at_rest`]).
pub async fn prepare_signing_keys(
    config: &Config,
    db: &Db,
) -> Result<crate::signing_keys::at_rest::Prepared, crate::signing_keys::KeyError> {
    use crate::signing_keys::{Kek, KeyError, at_rest};
    // A worker host may lack the KEK file its shared config names: that
    // matters only while there are plain keys to seal, and then the
    // reason it could not be read is the error to show.
    let (kek, unreadable) = match Kek::from_config(&config.signing) {
        Ok(kek) => (kek, None),
        Err(e) => (None, Some(e)),
    };
    match at_rest::prepare(db, kek.as_ref(), crate::db::unix_now()).await {
        Err(KeyError::NoKek) => Err(unreadable.unwrap_or(KeyError::NoKek)),
        other => other,
    }
}

/// Everything a process opens from its config.
#[derive(Clone)]
pub struct Opened {
    /// Metadata.
    pub db: Db,
    /// Chunk objects.
    pub storage: Arc<dyn Storage>,
    /// Staged uploads (may be the same backend as `storage`).
    pub staging: Arc<dyn Storage>,
}

/// Opens database, storage and staging.
pub async fn open(config: &Config, max_connections: u32) -> Result<Opened, BootstrapError> {
    let storage = open_storage(&config.storage)?;
    let staging = open_staging(config, &storage)?;
    let db = open_db(config, max_connections).await?;
    Ok(Opened {
        db,
        storage,
        staging,
    })
}
