//! Decrypted signing keys of this process, keyed by the immutable
//! `cache_keys.id`: each key is opened once (first use or start-up), never
//! per request. A row's secret never changes under its id (rotation adds
//! rows), so the map needs no invalidation; entries of deleted rows are a
//! few bytes each until restart.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use super::{Kek, KeyError, read_private};
use crate::db::Db;
use crate::db::cache_keys::{self, CacheKeyRecord};
use larder_core::nix::signing::SigningKey;

/// The KEK and the keys opened with it.
#[derive(Debug)]
pub struct KeyRing {
    kek: Kek,
    keys: Mutex<HashMap<i64, Arc<SigningKey>>>,
}

/// An active key with the id of its row: (row id, fingerprint) names a
/// signature for good, since a row's secret never changes.
#[derive(Debug, Clone)]
pub struct ActiveKey {
    /// `cache_keys.id`.
    pub row_id: i64,
    /// The decrypted key.
    pub key: Arc<SigningKey>,
}

/// What signs a cache's narinfos now.
#[derive(Debug, Clone)]
pub struct CacheSigning {
    /// Active keys, newest first: one `Sig:` line each.
    pub active: Vec<ActiveKey>,
    /// Every key name the cache has had, retired included: signatures of
    /// these names that came with an upload are dropped, so a retired
    /// (perhaps compromised) key's signature is never republished.
    pub own_names: Vec<String>,
}

impl KeyRing {
    /// An empty ring over `kek`.
    pub fn new(kek: Kek) -> Self {
        Self {
            kek,
            keys: Mutex::default(),
        }
    }

    /// The KEK, to seal new keys.
    pub fn kek(&self) -> &Kek {
        &self.kek
    }

    /// The decrypted key of a row (opened on first use).
    pub fn key(&self, cache: &str, row: &CacheKeyRecord) -> Result<Arc<SigningKey>, KeyError> {
        if let Some(k) = self.lock().get(&row.id) {
            return Ok(k.clone());
        }
        let key = Arc::new(open_row(&self.kek, cache, row)?);
        self.lock().insert(row.id, key.clone());
        Ok(key)
    }

    /// The keys that sign for a cache at `now`, from its rows (newest first,
    /// as [`cache_keys::of_cache`] returns them). Takes the rows so their
    /// names move into [`CacheSigning::own_names`] instead of being copied
    /// for every narinfo.
    pub fn signing(
        &self,
        cache: &str,
        rows: Vec<CacheKeyRecord>,
        now: i64,
    ) -> Result<CacheSigning, KeyError> {
        let active = rows
            .iter()
            .filter(|r| r.is_active(now))
            .map(|r| {
                self.key(cache, r)
                    .map(|key| ActiveKey { row_id: r.id, key })
            })
            .collect::<Result<_, _>>()?;
        Ok(CacheSigning {
            active,
            own_names: rows.into_iter().map(|r| r.key_name).collect(),
        })
    }

    /// Opens every active key of every cache: a wrong KEK or an unreadable
    /// key file fails the start, not the first pull. Returns how many.
    pub async fn open_all(&self, db: &Db, now: i64) -> Result<usize, KeyError> {
        let mut conn = db.conn().await?;
        let rows = cache_keys::all_active(conn.raw(), now).await?;
        drop(conn);
        for (cache, row) in &rows {
            self.key(cache, row)?;
        }
        Ok(rows.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<SigningKey>>> {
        // A panic while holding the lock cannot leave the map half-written.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Opens a row's secret: the sealed text, or the key file it names (which
/// must hold a key of the row's name and public key, mode 0600).
fn open_row(kek: &Kek, cache: &str, row: &CacheKeyRecord) -> Result<SigningKey, KeyError> {
    if let Some(sealed) = &row.secret {
        return kek.open(cache, &row.key_name, sealed);
    }
    let Some(file) = &row.key_file else {
        return Err(KeyError::NoSecret {
            cache: cache.to_owned(),
            key_name: row.key_name.clone(),
        });
    };
    let key = read_key_file(Path::new(file))?;
    if key.name() != row.key_name || key.public_key().to_string() != row.public_key {
        return Err(KeyError::BadKeyFile {
            path: file.into(),
            key_name: row.key_name.clone(),
        });
    }
    Ok(key)
}

/// Reads a Nix secret key file (`nix-store --generate-binary-cache-key`
/// output), mode checked.
pub(super) fn read_key_file(path: &Path) -> Result<SigningKey, KeyError> {
    let text = read_private(path)?;
    // The error names only the file: its text is the secret.
    text.trim()
        .parse()
        .map_err(|_| KeyError::NotAKeyFile(path.to_owned()))
}
