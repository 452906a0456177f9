//! Narinfos already rendered and signed, so a hit costs no database round
//! trip: the text of a path whose NAR is ingested (its narinfo no longer
//! changes by itself), with the object id and last access a read needs for
//! retention's bookkeeping.
//!
//! Invalidation, across replicas sharing one database: a text is kept with
//! the cache's [`CacheSigning`] it was signed under and served only while
//! the catalog ([`crate::cache_catalog`]) still hands out that very value.
//! The catalog is rebuilt every `[jwt] revocation-refresh`, at once on a
//! change of the cache through this replica, and when a key retires; so a
//! delete, a GC, a replaced NAR or a key rotation made anywhere reaches
//! every replica's texts within the refresh. Writes of a path through this
//! replica drop its text at once ([`RenderedNarinfos::forget`]). Misses are
//! never kept: a path is served as soon as it is recorded.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use hashlink::LruCache;

use larder_core::nix::store_path::StorePathHash;
use larder_shared::db::{CacheId, ObjectId};
use larder_shared::signing_keys::CacheSigning;

/// Texts remembered; a narinfo is under 2 KiB unless it has hundreds of
/// references, so a few tens of megabytes at most.
pub const CAPACITY: usize = 16 * 1024;

/// One narinfo as served.
#[derive(Debug)]
pub struct RenderedNarinfo {
    /// The object, for the access log.
    pub object_id: ObjectId,
    /// Its last access as of rendering (or of the synchronous touch since):
    /// a read that needs a synchronous touch goes to the database instead.
    pub last_accessed_at: i64,
    /// The narinfo.
    pub text: Bytes,
    /// What signed it: the text is valid while the catalog hands out this.
    signing: Arc<CacheSigning>,
}

impl RenderedNarinfo {
    /// `text`, signed under `signing`, of the object `object_id`.
    pub fn new(
        signing: &Arc<CacheSigning>,
        object_id: ObjectId,
        last_accessed_at: i64,
        text: Bytes,
    ) -> Self {
        Self {
            object_id,
            last_accessed_at,
            text,
            signing: signing.clone(),
        }
    }
}

type Key = (CacheId, StorePathHash);

#[derive(Debug)]
struct Held {
    texts: LruCache<Key, Arc<RenderedNarinfo>>,
    /// Bumped by every [`RenderedNarinfos::forget`]: a rendering that
    /// began before it may predate the change, so it is not kept.
    generation: u64,
}

/// Rendered narinfos by (cache, store path hash), bounded.
pub struct RenderedNarinfos {
    held: Mutex<Held>,
}

impl Default for RenderedNarinfos {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl std::fmt::Debug for RenderedNarinfos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderedNarinfos").finish_non_exhaustive()
    }
}

/// What [`RenderedNarinfos::generation`] returned before a rendering.
#[derive(Debug, Clone, Copy)]
pub struct Generation(u64);

impl RenderedNarinfos {
    /// A cache of at most `capacity` texts.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            held: Mutex::new(Held {
                texts: LruCache::new(capacity.max(1)),
                generation: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // Every operation replaces whole values: a panic leaves nothing half-done.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The text of `hash` in `cache`, if it was rendered under `signing`.
    pub fn get(
        &self,
        cache: CacheId,
        hash: &StorePathHash,
        signing: &Arc<CacheSigning>,
    ) -> Option<Arc<RenderedNarinfo>> {
        let key = (cache, hash.clone());
        let mut held = self.lock();
        let found = held.texts.get(&key)?;
        if Arc::ptr_eq(&found.signing, signing) {
            return Some(found.clone());
        }
        held.texts.remove(&key);
        None
    }

    /// To be read before the database, and given to [`Self::insert`].
    pub fn generation(&self) -> Generation {
        Generation(self.lock().generation)
    }

    /// Keeps a text rendered from rows read after `since`, unless a path
    /// was forgotten meanwhile.
    pub fn insert(
        &self,
        since: Generation,
        cache: CacheId,
        hash: &StorePathHash,
        rendered: Arc<RenderedNarinfo>,
    ) {
        let mut held = self.lock();
        if held.generation == since.0 {
            held.texts.insert((cache, hash.clone()), rendered);
        }
    }

    /// Drops the text of `hash` in `cache`: this replica just changed the
    /// path (deleted, replaced, recorded).
    pub fn forget(&self, cache: CacheId, hash: &StorePathHash) {
        let mut held = self.lock();
        held.texts.remove(&(cache, hash.clone()));
        held.generation += 1;
    }

    /// Number of texts held.
    pub fn len(&self) -> usize {
        self.lock().texts.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signing() -> Arc<CacheSigning> {
        Arc::new(CacheSigning {
            active: Vec::new(),
            own_names: Vec::new(),
        })
    }

    fn hash(c: char) -> StorePathHash {
        std::iter::repeat_n(c, 32)
            .collect::<String>()
            .parse()
            .unwrap()
    }

    fn put(texts: &RenderedNarinfos, s: &Arc<CacheSigning>, h: &StorePathHash, text: &str) {
        let since = texts.generation();
        let r = RenderedNarinfo::new(s, ObjectId(7), 100, Bytes::from(text.to_owned()));
        texts.insert(since, CacheId(1), h, Arc::new(r));
    }

    #[test]
    fn served_only_under_the_signing_it_was_made_with() {
        let texts = RenderedNarinfos::default();
        let (old, new) = (signing(), signing());
        put(&texts, &old, &hash('a'), "A");
        let hit = texts.get(CacheId(1), &hash('a'), &old).unwrap();
        assert_eq!(hit.text, "A");
        assert!(texts.get(CacheId(2), &hash('a'), &old).is_none());
        // The catalog was refreshed, or a key rotated: a new signing value.
        assert!(texts.get(CacheId(1), &hash('a'), &new).is_none());
        assert!(texts.is_empty(), "the stale text is dropped");
    }

    #[test]
    fn forget_drops_the_text_and_a_rendering_begun_before_it() {
        let texts = RenderedNarinfos::default();
        let s = signing();
        put(&texts, &s, &hash('a'), "A");
        let since = texts.generation();
        texts.forget(CacheId(1), &hash('a'));
        assert!(texts.get(CacheId(1), &hash('a'), &s).is_none());
        // Rows read before the delete must not bring the path back.
        let r = RenderedNarinfo::new(&s, ObjectId(7), 100, Bytes::from("A"));
        texts.insert(since, CacheId(1), &hash('a'), Arc::new(r));
        assert!(texts.is_empty());
        put(&texts, &s, &hash('a'), "A2");
        assert_eq!(texts.get(CacheId(1), &hash('a'), &s).unwrap().text, "A2");
    }

    #[test]
    fn bounded() {
        let texts = RenderedNarinfos::with_capacity(2);
        let s = signing();
        for c in ['a', 'b', 'c'] {
            put(&texts, &s, &hash(c), "x");
        }
        assert_eq!(texts.len(), 2);
        assert!(texts.get(CacheId(1), &hash('a'), &s).is_none());
    }
}
