//! Every cache's configuration in memory (visibility, store dir, priority,
//! retention, key rows), so a read costs no query for the cache: a narinfo
//! is one round trip (the object), `nix-cache-info` none.
//!
//! Reloaded whole every `[jwt] revocation-refresh`, next to the revocation
//! list, so a change made through another replica or `larder-admin` (a
//! cache made private, a key rotated or retired) reaches this one within
//! that interval. Changes made through this replica drop the entry at
//! once ([`CacheCatalog::forget`]). A name not held is looked up in the
//! database (and kept if found), so a cache created elsewhere is usable
//! at once; only reads go through here (`Need::FROM_MEMORY` in the auth module),
//! writes still read the row.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use larder_core::CacheName;
use larder_shared::db::cache_keys::{self, CacheKeyRecord};
use larder_shared::db::caches::{self, CacheRecord};
use larder_shared::db::{CacheId, Db, DbError};
use larder_shared::signing_keys::{CacheSigning, KeyError, KeyRing};

/// One cache as this replica holds it.
#[derive(Debug)]
pub struct CatalogEntry {
    /// The row.
    pub cache: Arc<CacheRecord>,
    /// Its key rows, newest first, retired included.
    keys: Vec<CacheKeyRecord>,
    /// The keys opened for signing, with the moment the first of them
    /// retires (then they are worked out again).
    signing: RwLock<Option<(Arc<CacheSigning>, Option<i64>)>>,
}

impl CatalogEntry {
    fn new(cache: CacheRecord, keys: Vec<CacheKeyRecord>) -> Self {
        Self {
            cache: Arc::new(cache),
            keys,
            signing: RwLock::default(),
        }
    }

    /// What signs this cache's narinfos at `now`; keys are opened (through
    /// the ring, once per process) on first use, not on every refresh.
    pub fn signing(&self, ring: &KeyRing, now: i64) -> Result<Arc<CacheSigning>, KeyError> {
        let held = self.signing.read().unwrap_or_else(PoisonError::into_inner);
        if let Some((signing, until)) = held.as_ref()
            && until.is_none_or(|t| now < t)
        {
            return Ok(signing.clone());
        }
        drop(held);
        let signing = Arc::new(ring.signing(self.cache.name.as_str(), self.keys.clone(), now)?);
        let until = self
            .keys
            .iter()
            .filter(|k| k.is_active(now))
            .filter_map(|k| k.retires_at)
            .min();
        *self.signing.write().unwrap_or_else(PoisonError::into_inner) =
            Some((signing.clone(), until));
        Ok(signing)
    }
}

#[derive(Debug, Default)]
struct Held {
    by_name: HashMap<CacheName, Arc<CatalogEntry>>,
    /// Bumped by every [`CacheCatalog::forget`]: a lookup that started
    /// before it would bring the forgotten state back, so it is not kept.
    generation: u64,
    /// Names forgotten since the running refresh began: its rows for them
    /// may predate the change, so they are left out.
    forgotten: Vec<CacheName>,
}

/// The caches of this replica, by name.
#[derive(Debug, Default)]
pub struct CacheCatalog {
    held: RwLock<Held>,
}

impl CacheCatalog {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Held> {
        // Every write replaces whole values: a panic leaves nothing half-done.
        self.held.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Held> {
        self.held.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cache named `name`: from memory, else from the database.
    pub async fn get(
        &self,
        db: &Db,
        name: &CacheName,
    ) -> Result<Option<Arc<CatalogEntry>>, DbError> {
        let generation = {
            let held = self.read();
            if let Some(entry) = held.by_name.get(name) {
                return Ok(Some(entry.clone()));
            }
            held.generation
        };
        let mut conn = db.conn().await?;
        let Some(cache) = caches::get_by_name(conn.raw(), name).await? else {
            return Ok(None);
        };
        let keys = cache_keys::of_cache(conn.raw(), cache.id).await?;
        drop(conn);
        let entry = Arc::new(CatalogEntry::new(cache, keys));
        let mut held = self.write();
        if held.generation == generation {
            held.by_name.insert(name.clone(), entry.clone());
        }
        Ok(Some(entry))
    }

    /// Drops what is held about `name`: this replica just changed it.
    pub fn forget(&self, name: &CacheName) {
        let mut held = self.write();
        held.by_name.remove(name);
        held.generation += 1;
        held.forgotten.push(name.clone());
    }

    /// Reloads every cache and key row (two queries).
    pub async fn refresh(&self, db: &Db) -> Result<(), DbError> {
        self.write().forgotten.clear();
        let mut conn = db.conn().await?;
        let all = caches::list(conn.raw()).await?;
        let keys = cache_keys::all(conn.raw()).await?;
        drop(conn);
        let mut keys_of: HashMap<CacheId, Vec<CacheKeyRecord>> = HashMap::new();
        for k in keys {
            keys_of.entry(k.cache_id).or_default().push(k);
        }
        let mut by_name: HashMap<_, _> = all
            .into_iter()
            .map(|c| {
                let keys = keys_of.remove(&c.id).unwrap_or_default();
                (c.name.clone(), Arc::new(CatalogEntry::new(c, keys)))
            })
            .collect();
        let mut held = self.write();
        for name in std::mem::take(&mut held.forgotten) {
            by_name.remove(&name);
        }
        held.by_name = by_name;
        Ok(())
    }
}
